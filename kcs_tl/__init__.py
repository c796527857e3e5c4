"""kcs_tl: knowledge-critical subnetworks and sparse neuron interventions for TransformerLens.

Masks attach in ``kcs_tl.masks.attach``; the loss terms are in ``kcs_tl.objectives``;
the search loop is ``kcs_tl.search.discover``; results are ``kcs_tl.subnetwork.Subnetwork``
and ``kcs_tl.metrics.evaluate``.
"""

from kcs_tl.adapters import GRANULARITIES, HOOK_NAMES, WEIGHT_NAMES
from kcs_tl.analysis.report import report
from kcs_tl.baselines import random_like
from kcs_tl.data import KGBatch, KnowledgeGraph, Triplet, encode, lm_blocks
from kcs_tl.masks import (
    RELAXATIONS, HardConcrete, MaskedModel, Sigmoid, StraightThroughSigmoid, attach_masks,
    get_relaxation,
)
from kcs_tl.metrics import Criteria, Evaluation, evaluate
from kcs_tl.search import Discovery, DiscoveryConfig, discover
from kcs_tl.subnetwork import Subnetwork, majority

__version__ = "0.1.0"

__all__ = [
    "GRANULARITIES", "HOOK_NAMES", "RELAXATIONS", "WEIGHT_NAMES", "Criteria", "Discovery",
    "DiscoveryConfig", "Evaluation", "HardConcrete", "KGBatch", "KnowledgeGraph", "MaskedModel",
    "Sigmoid", "StraightThroughSigmoid", "Subnetwork", "Triplet", "attach_masks", "discover",
    "encode", "evaluate", "get_relaxation", "lm_blocks", "majority", "random_like", "report",
]
