"""Baselines a subnetwork is measured against."""

from kcs_tl.baselines.random import random_like

__all__ = ["random_like"]
