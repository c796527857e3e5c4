"""Baselines a subnetwork is measured against: random sets, and attribution rankings of units or weights."""

from kcs_tl.baselines.attribution import (
    UNIT_METHODS, WEIGHT_METHODS, top_subnetwork, unit_attributions, unit_baseline, weight_attributions,
    weight_baseline,
)
from kcs_tl.baselines.random import random_like

__all__ = [
    "UNIT_METHODS", "WEIGHT_METHODS", "random_like", "top_subnetwork", "unit_attributions", "unit_baseline",
    "weight_attributions", "weight_baseline",
]
