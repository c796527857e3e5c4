"""kcs_tl: knowledge-critical subnetworks and sparse neuron interventions for TransformerLens."""

from kcs_tl.adapters import GRANULARITIES, HOOK_NAMES, WEIGHT_NAMES
from kcs_tl.masks import (
    RELAXATIONS, HardConcrete, MaskedModel, Sigmoid, StraightThroughSigmoid, attach_masks,
    get_relaxation,
)
from kcs_tl.subnetwork import Subnetwork, majority

__version__ = "0.1.0"

__all__ = [
    "GRANULARITIES", "HOOK_NAMES", "RELAXATIONS", "WEIGHT_NAMES", "HardConcrete", "MaskedModel",
    "Sigmoid", "StraightThroughSigmoid", "Subnetwork", "attach_masks", "get_relaxation", "majority",
]
