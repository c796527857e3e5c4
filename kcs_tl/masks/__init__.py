"""Masks: relaxations, the attach mechanism, and trainable masks on a HookedTransformer or TransformerBridge."""

from kcs_tl.masks.attach import Attachment
from kcs_tl.masks.gates import MODES
from kcs_tl.masks.masked_model import ABLATIONS, MaskedModel, attach_masks, mean_activations
from kcs_tl.masks.relaxations import (
    RELAXATIONS, HardConcrete, Relaxation, Sigmoid, StraightThroughSigmoid, get_relaxation,
)

__all__ = [
    "ABLATIONS", "MODES", "RELAXATIONS", "Attachment", "HardConcrete", "MaskedModel", "Relaxation",
    "Sigmoid", "StraightThroughSigmoid", "attach_masks", "get_relaxation", "mean_activations",
]
