"""kcs_tl: knowledge-critical subnetworks and sparse neuron interventions for TransformerLens.

Masks attach in ``kcs_tl.masks.attach``; one step's losses are in ``kcs_tl.discovery.losses``
(the terms in ``kcs_tl.discovery.terms``); the search is ``kcs_tl.discovery.discover``; results
are ``kcs_tl.subnetwork.Subnetwork`` and ``kcs_tl.evaluation.evaluate``. The map of the package:
docs/architecture.md.
"""

from kcs_tl.adapters import GRANULARITIES, HOOK_NAMES, WEIGHT_NAMES, Architecture, architecture
from kcs_tl.analysis.methods import compare_methods
from kcs_tl.analysis.report import report
from kcs_tl.baselines import random_like, unit_baseline, weight_baseline
from kcs_tl.data import (
    KGBatch, KnowledgeGraph, Triplet, encode, lm_blocks, load_countries, load_prose,
)
from kcs_tl.discovery import Discovery, DiscoveryConfig, discover
from kcs_tl.masks import (
    RELAXATIONS, HardConcrete, MaskedModel, Sigmoid, StraightThroughSigmoid, attach_masks,
    get_relaxation,
)
from kcs_tl.evaluation import CriterionCheck, Criteria, Evaluation, evaluate
from kcs_tl.known import KnownFacts, known_facts
from kcs_tl.subnetwork import Subnetwork, majority
from kcs_tl.interventions import (
    Intervention, InterventionConfig, InterventionTask, agreement_task, evaluate_intervention,
    find_interventions, gender_task, prompt_task,
)
from kcs_tl.analysis.stability import SeedStability, seed_stability
from kcs_tl.sweeps import SweepResult, sweep
from kcs_tl.validate import InputError, InputTypeError, InputValueError

__version__ = "0.1.0"

__all__ = [
    "GRANULARITIES", "HOOK_NAMES", "RELAXATIONS", "WEIGHT_NAMES", "Architecture", "CriterionCheck", "Criteria", "Discovery",
    "DiscoveryConfig", "Evaluation", "HardConcrete", "KGBatch", "KnowledgeGraph", "KnownFacts", "MaskedModel",
    "Sigmoid", "StraightThroughSigmoid", "Subnetwork", "Triplet", "architecture", "attach_masks", "discover",
    "encode", "evaluate", "get_relaxation", "known_facts", "lm_blocks", "load_countries",
    "load_prose", "majority", "random_like", "report",
    # sparse interventions (De Cao et al.) and attribution baselines
    "Intervention", "InterventionConfig", "InterventionTask", "agreement_task", "compare_methods",
    "evaluate_intervention", "find_interventions", "gender_task", "prompt_task", "unit_baseline",
    "weight_baseline",
    # grids of runs (Ray or in-process) and seed stability
    "SeedStability", "SweepResult", "seed_stability", "sweep",
    # what a bad input raises (the command line prints it as one line)
    "InputError", "InputTypeError", "InputValueError",
]
