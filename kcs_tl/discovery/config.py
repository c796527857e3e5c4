"""Every setting of a search (``DiscoveryConfig``), what each field accepts (``FIELD_CHECKS``), and its device."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field
from functools import partial

import torch

from kcs_tl import validate
from kcs_tl.adapters import GRANULARITIES, HOOK_NAMES, WEIGHT_NAMES
from kcs_tl.discovery.teacher import TEACHERS
from kcs_tl.discovery.terms import SUPPRESSIONS
from kcs_tl.masks.relaxations import RELAXATIONS, get_relaxation
from kcs_tl.evaluation import Criteria
from kcs_tl.validate import InputError, InputTypeError, InputValueError

MAX_LR = 10.0
"""Adam moves a score by about ``lr`` per step; above 10 every score jumps past saturation
(|logit| > 10) in one step, so the masks flip at random instead of being learned."""


@dataclass
class DiscoveryConfig:
    """Every setting of a search; round-trips through JSON and is saved with the result.

    The objective's defaults are Bayazit et al.'s (weights 1.5 / 1 / 1, init 0.45,
    straight-through sigmoid, Adam lr 0.2 with 10% warm-up, 250 KG sentences and
    10 LM blocks per step). One difference, for speed: the default holds the
    expected density at 1 - ``target_sparsity`` with a Lagrangian (Edge Pruning's
    scheme) instead of the published lambda schedule (2, rising to 3), which on
    the built-in model needed far more steps to pass 98% sparsity (see
    benchmarks/convergence.py). ``preset("published")`` restores the schedule
    (``target_sparsity=None``) and the released 40,000 steps.

    Defaults that adapt to the model: ``weights=None`` masks every matrix its
    architecture has (``kcs_tl.architecture``); ``teacher="auto"`` keeps the
    original model's outputs in the most faithful form that fits in
    ``teacher_max_gib`` (``kcs_tl.discovery.teacher``); ``prepend_bos=None`` encodes
    facts and text with a BOS only when the model's ``cfg.default_prepend_bos``
    says so. Every setting is checked against the model before any forward pass.
    """

    # What is masked.
    weights: tuple[str, ...] | None = None  # None: every matrix the architecture has (W_gate too)
    hooks: tuple[str, ...] = ()
    layers: tuple[int, ...] | None = None  # None: the upper half
    granularity: str = "weight"
    relaxation: str = "straight_through"
    relaxation_options: dict = field(default_factory=dict)
    init_prob: float = 0.45
    # The objective.
    suppression: str = "kl_uniform"  # or "entropy", "margin"
    suppression_log_margin: float = math.log(1e-3)
    target_weight: float = 1.5
    control_kg_weight: float = 1.0
    control_lm_weight: float = 1.0
    sparsity_start: float = 2.0  # lambda schedule, used when target_sparsity is None
    sparsity_end: float = 3.0
    target_sparsity: float | None = 0.985  # held by a Lagrangian; None: the lambda schedule
    lagrangian_lr: float = 0.2
    expression_weight: float = 0.0
    # Optimisation.
    steps: int = 1500
    lr: float = 0.2
    warmup_fraction: float = 0.1
    kg_batch_size: int = 250
    lm_batch_size: int = 10
    lm_block_len: int = 512  # capped at the model's n_ctx
    teacher: str = "auto"  # the original outputs: "full", "fp16", "top_k", "on_the_fly" (discovery.teacher)
    teacher_top_k: int = 100  # k of the "top_k" representation
    teacher_max_gib: float = 2.0  # memory budget of the cached outputs
    lm_chunk_max_gib: float = 1.0  # activations of the LM blocks backpropagated together (estimated)
    prepend_bos: bool | None = None  # None: the model's cfg.default_prepend_bos
    # Validation, stopping, checkpoints.
    control_val_fraction: float = 0.2
    lm_val_fraction: float = 0.1
    eval_every: int = 50
    early_stop: bool = True
    criteria: Criteria = field(default_factory=Criteria)
    checkpoint_every: int = 0
    checkpoint_dir: str | None = None
    # Where and how it runs.
    seed: int = 0
    device: str = "auto"  # "auto": CUDA when available, else CPU
    bf16: bool = False  # autocast on CUDA
    progress: bool = True

    def __post_init__(self):
        """Check and normalise every field (``FIELD_CHECKS`` says what is valid), then their combinations."""
        for name, check in FIELD_CHECKS.items():
            setattr(self, name, check(f"DiscoveryConfig.{name}", getattr(self, name)))
        if self.weights == () and not self.hooks:
            raise InputValueError("DiscoveryConfig: weights and hooks are both empty; nothing would be masked")
        if self.checkpoint_every and not self.checkpoint_dir:
            raise InputValueError("DiscoveryConfig.checkpoint_every needs a checkpoint_dir")
        try:
            get_relaxation(self.relaxation, **self.relaxation_options)
        except InputError as err:
            raise type(err)(f"DiscoveryConfig.relaxation_options: {err}") from None

    @classmethod
    def preset(cls, name: str, **overrides) -> "DiscoveryConfig":
        """Named settings: ``"default"`` or ``"published"`` (the released 40,000-step runs)."""
        presets = {"default": {}, "published": {"steps": 40_000, "early_stop": False, "target_sparsity": None}}
        if name not in presets:
            raise InputValueError(f"unknown preset {name!r}; choose from {sorted(presets)}")
        return cls(**(presets[name] | overrides))

    def bos(self, model) -> bool:
        """Whether facts and LM blocks start with BOS: ``prepend_bos``, or the model's own convention."""
        return model.cfg.default_prepend_bos if self.prepend_bos is None else self.prepend_bos

    def to_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_json(cls, data: dict) -> "DiscoveryConfig":
        if not isinstance(data, dict):
            raise InputTypeError("a DiscoveryConfig is read from a JSON object of its fields, "
                                 f"got {validate.given(data)}")
        data = {RENAMED.get(k, k): v for k, v in data.items()}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            close = [m for u in unknown for m in difflib.get_close_matches(str(u), known, n=1)]
            hint = f" (did you mean {close}?)" if close else ""
            raise InputValueError(f"unknown config fields {unknown}{hint}; the valid fields are those of "
                                  "kcs_tl.DiscoveryConfig (help(kcs_tl.DiscoveryConfig))")
        return cls(**data)


RENAMED = {"reference": "teacher", "reference_top_k": "teacher_top_k", "reference_max_gib": "teacher_max_gib"}
"""Fields under their earlier names, as configs saved in run folders and checkpoints hold them."""


def _criteria(name: str, value) -> Criteria:
    if isinstance(value, Criteria):
        return dataclasses.replace(value)  # re-checked
    if not isinstance(value, dict):
        raise InputTypeError(f"{name} must be a Criteria or a dict of its fields, got {validate.given(value)}")
    known = [f.name for f in dataclasses.fields(Criteria)]
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise InputValueError(f"{name} has unknown field(s) {unknown}; valid: {known}")
    return Criteria(**value)


def _options(name: str, value) -> dict:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise InputTypeError(f"{name} must be a dict of option name -> value, got {validate.given(value)}")
    return value


_v = validate
FIELD_CHECKS = {
    # field: the check that says what is valid (each returns the normalised value)
    "weights": partial(_v.optional, _v.names, options=WEIGHT_NAMES),
    "hooks": partial(_v.names, options=HOOK_NAMES),
    "layers": partial(_v.optional, _v.layers),
    "granularity": partial(_v.choice, options=GRANULARITIES),
    "relaxation": partial(_v.choice, options=sorted(RELAXATIONS)),
    "relaxation_options": _options,
    "init_prob": _v.fraction,
    "suppression": partial(_v.choice, options=SUPPRESSIONS),
    "suppression_log_margin": partial(_v.number, high=0, high_open=True),
    "target_weight": partial(_v.number, low=0, low_open=True),
    "control_kg_weight": partial(_v.number, low=0),
    "control_lm_weight": partial(_v.number, low=0),
    "sparsity_start": partial(_v.number, low=0),
    "sparsity_end": partial(_v.number, low=0),
    "target_sparsity": partial(_v.optional, _v.fraction),
    "lagrangian_lr": partial(_v.number, low=0, high=MAX_LR, low_open=True),
    "expression_weight": partial(_v.number, low=0),
    "steps": partial(_v.integer, low=1),
    "lr": partial(_v.number, low=0, high=MAX_LR, low_open=True),
    "warmup_fraction": partial(_v.number, low=0, high=1),
    "kg_batch_size": partial(_v.integer, low=1),
    "lm_batch_size": partial(_v.integer, low=1),
    "lm_block_len": partial(_v.integer, low=2),
    "teacher": partial(_v.choice, options=TEACHERS),
    "teacher_top_k": partial(_v.integer, low=1),
    "teacher_max_gib": partial(_v.number, low=0, low_open=True),
    "lm_chunk_max_gib": partial(_v.number, low=0, low_open=True),
    "prepend_bos": partial(_v.optional, _v.boolean),
    "control_val_fraction": _v.fraction,
    "lm_val_fraction": _v.fraction,
    "eval_every": partial(_v.integer, low=1),
    "early_stop": _v.boolean,
    "criteria": _criteria,
    "checkpoint_every": partial(_v.integer, low=0),
    "checkpoint_dir": partial(_v.optional, _v.path),
    "seed": partial(_v.integer, low=0, high=2**63 - 1),
    "device": _v.device,
    "bf16": _v.boolean,
    "progress": _v.boolean,
}


def checked_config(config: DiscoveryConfig | None) -> DiscoveryConfig:
    """A validated copy: settings edited after the config was made are checked again."""
    if config is None:
        return DiscoveryConfig()
    if not isinstance(config, DiscoveryConfig):
        raise InputTypeError("config must be a DiscoveryConfig (DiscoveryConfig(**settings)), "
                             f"got {validate.given(config)}")
    return dataclasses.replace(config)


def resolve_device(cfg: DiscoveryConfig) -> torch.device:
    """The device the search runs on: ``cfg.device``, with ``"auto"`` resolved and unavailable ones refused."""
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise InputValueError(f"device {cfg.device!r} asked for, but CUDA is not available; use 'cpu' or 'auto'")
    if cfg.device == "mps" and not torch.backends.mps.is_available():
        raise InputValueError("device 'mps' asked for, but MPS is not available; use 'cpu' or 'auto'")
    return torch.device(cfg.device)
