"""discover(): the search for a knowledge-critical subnetwork.

One step: draw masks once, run TargetKG and ControlKG sentences in one forward
and LM blocks in another (both on the model with the subnetwork removed), add
the loss terms of ``objectives``, and update the mask scores (the model's
weights stay frozen). The original model's outputs never change, so they are
computed once before the search.

Every ``eval_every`` steps the binary mask that would be returned
(``MaskedModel.binary()``, whatever the relaxation) is scored on validation
data (TargetKG on training templates, held-out ControlKG triplets, held-out LM
blocks). The result is the evaluated checkpoint that meets the criteria with
the highest sparsity; if none does, the one with the smallest summed
shortfall from the criteria (the best trade-off). Not simply the last.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import pickle
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from kcs_tl import validate
from kcs_tl.adapters import (
    GRANULARITIES, HOOK_NAMES, WEIGHT_NAMES, activation_bytes, check_model, head, residual_before, run_from,
)
from kcs_tl.data.batch import KGBatch
from kcs_tl.data.kg import KnowledgeGraph
from kcs_tl.data.lm import model_lm_blocks, split_blocks
from kcs_tl.data.splits import check_disjoint, holdout
from kcs_tl.data.verbalise import encode
from kcs_tl.files import atomic_file, writable_folder
from kcs_tl.masks.masked_model import MaskedModel, plan_sites
from kcs_tl.masks.relaxations import RELAXATIONS, get_relaxation
from kcs_tl.metrics import Criteria, kg_metrics, lm_metrics, score_kg, score_lm
from kcs_tl.objectives import SUPPRESSIONS, Lagrangian, Reference, sparsity_weight, suppression
from kcs_tl.precision import at_least_fp32
from kcs_tl.subnetwork import Subnetwork
from kcs_tl.teacher import REFERENCES, plan_reference

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
    architecture has (``kcs_tl.architecture``); ``reference="auto"`` keeps the
    original model's outputs in the most faithful form that fits in
    ``reference_max_gib`` (``kcs_tl.teacher``); ``prepend_bos=None`` encodes
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
    reference: str = "auto"  # the original model's outputs: "full", "fp16", "top_k", "on_the_fly" (kcs_tl.teacher)
    reference_top_k: int = 100  # k of the "top_k" representation
    reference_max_gib: float = 2.0  # memory budget of the cached outputs
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
            raise ValueError("DiscoveryConfig: weights and hooks are both empty; nothing would be masked")
        if self.checkpoint_every and not self.checkpoint_dir:
            raise ValueError("DiscoveryConfig.checkpoint_every needs a checkpoint_dir")
        try:
            get_relaxation(self.relaxation, **self.relaxation_options)
        except (TypeError, ValueError) as err:
            raise type(err)(f"DiscoveryConfig.relaxation_options: {err}") from None

    @classmethod
    def preset(cls, name: str, **overrides) -> "DiscoveryConfig":
        """Named settings: ``"default"`` or ``"published"`` (the released 40,000-step runs)."""
        presets = {"default": {}, "published": {"steps": 40_000, "early_stop": False, "target_sparsity": None}}
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(presets)}")
        return cls(**(presets[name] | overrides))

    def bos(self, model) -> bool:
        """Whether facts and LM blocks start with BOS: ``prepend_bos``, or the model's own convention."""
        return model.cfg.default_prepend_bos if self.prepend_bos is None else self.prepend_bos

    def to_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_json(cls, data: dict) -> "DiscoveryConfig":
        if not isinstance(data, dict):
            raise TypeError(f"a DiscoveryConfig is read from a JSON object of its fields, got {validate.given(data)}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            close = [m for u in unknown for m in difflib.get_close_matches(str(u), known, n=1)]
            hint = f" (did you mean {close}?)" if close else ""
            raise ValueError(f"unknown config fields {unknown}{hint}; the valid fields are those of "
                             "kcs_tl.DiscoveryConfig (help(kcs_tl.DiscoveryConfig))")
        return cls(**data)


def _criteria(name: str, value) -> Criteria:
    if isinstance(value, Criteria):
        return dataclasses.replace(value)  # re-checked
    if not isinstance(value, dict):
        raise TypeError(f"{name} must be a Criteria or a dict of its fields, got {validate.given(value)}")
    known = [f.name for f in dataclasses.fields(Criteria)]
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ValueError(f"{name} has unknown field(s) {unknown}; valid: {known}")
    return Criteria(**value)


def _options(name: str, value) -> dict:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise TypeError(f"{name} must be a dict of option name -> value, got {validate.given(value)}")
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
    "reference": partial(_v.choice, options=REFERENCES),
    "reference_top_k": partial(_v.integer, low=1),
    "reference_max_gib": partial(_v.number, low=0, low_open=True),
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


@dataclass
class Discovery:
    """A search's result: the subnetwork, the history (one row per step) and why it stopped.

    ``setup`` records what the search chose for itself: ``prepend_bos`` (whether
    text and facts were encoded with a BOS), ``reference`` (how the original
    model's outputs were kept, ``kcs_tl.teacher``) and ``target_known`` (TargetKG
    facts whose gold tail the original model ranks in its top 10).
    """

    subnetwork: Subnetwork
    history: pd.DataFrame
    config: DiscoveryConfig
    best_step: int
    criteria_met: bool
    stopped: str
    setup: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        setup = "".join(f", {k}: {v}" for k, v in self.setup.items())
        return (f"Discovery({self.subnetwork!r}, best step {self.best_step}, criteria "
                f"{'met' if self.criteria_met else 'not met'}, stopped: {self.stopped}{setup})")

    def _repr_html_(self) -> str:
        evals = self.history.dropna(subset=["val_target_top1"]) if "val_target_top1" in self.history else self.history
        return (f"<p><b>{self!r}</b></p>" + self.subnetwork._repr_html_()
                + evals.tail(10).to_html(index=False, float_format=lambda x: f"{x:.4f}"))


# -- data preparation ----------------------------------------------------------


def _tokenizer(model, what: str):
    if model.tokenizer is None:
        raise ValueError(f"{what} needs tokenising but the model has no tokenizer; pass one to "
                         "HookedTransformer(cfg, tokenizer=...) or give pre-tokenised inputs")
    return model.tokenizer


def _as_kg_batch(data, model, what: str, prepend_bos: bool) -> KGBatch:
    if isinstance(data, KnowledgeGraph):
        data = encode(data, _tokenizer(model, what), "train", prepend_bos=prepend_bos)
    if not isinstance(data, KGBatch):
        raise TypeError(f"{what} must be a KnowledgeGraph or a KGBatch, got {type(data).__name__}")
    return validate.kg_batch(what, data, model)


def _as_lm_blocks(data, model, block_len: int, prepend_bos: bool) -> Int[Tensor, "n block"]:
    if not isinstance(data, Tensor):
        try:
            data = model_lm_blocks(data, model, block_len, prepend_bos)
        except (TypeError, ValueError) as err:
            raise type(err)(f"control_lm: {err}") from None
    validate.tokens("control_lm", data, model)
    if len(data) < 2:
        raise ValueError(f"control_lm needs at least 2 token blocks [n, block_len], got {tuple(data.shape)}")
    return data


def _split_by_triplet(batch: KGBatch, fraction: float, seed: int) -> tuple[KGBatch, KGBatch]:
    """Train/validation rows with every triplet's sentences on one side only."""
    triplets = batch.triplet_index.unique()
    if len(triplets) < 2:
        raise ValueError("control_kg needs at least 2 triplets to hold some out for validation")
    _, held = holdout(len(triplets), fraction, seed)
    val = torch.isin(batch.triplet_index, triplets[held])
    return batch[torch.nonzero(~val)[:, 0]], batch[torch.nonzero(val)[:, 0]]


def _stack(a: Float[Tensor, "n pos d"], b: Float[Tensor, "m pos2 d"]) -> Tensor:
    """Two batches of residuals, right-padded with zeros to one width (causal: padding is never attended)."""
    width = max(a.shape[1], b.shape[1])
    return torch.cat([F.pad(a, (0, 0, 0, width - a.shape[1])), F.pad(b, (0, 0, 0, width - b.shape[1]))])


@dataclass
class _Data:
    """Everything a step and a validation read, on the search's device."""

    target: KGBatch
    control: KGBatch
    control_val: KGBatch
    lm: Int[Tensor, "n block"]
    lm_val: Int[Tensor, "n block"]
    control_ref: Reference | None  # per control label position, in row order; None: computed each step
    control_ref_rows: Int[Tensor, "n_labels"]
    lm_ref: Reference | None  # per LM position, block-major; None: computed each step
    start: int  # first masked layer: below it nothing changes during the search
    target_resid: Float[Tensor, "n_target pos d_model"]  # residual stream entering ``start``
    control_resid: Float[Tensor, "n_control pos d_model"]
    lm_resid: Float[Tensor, "n_lm block d_model"]
    base_control_top1: float
    base_lm_ppl: float
    lm_chunk: int = 1 << 30  # LM blocks per forward/backward within a step
    setup: dict = field(default_factory=dict)


_DTYPES = {"full": torch.float32, "fp16": torch.float16, "top_k": torch.float32}


@torch.no_grad()
def _cache(model, tokens: Tensor, start: int, batch_size: int, bar, select=None, kind: str = "on_the_fly",
           top_k: int = 0) -> tuple[Tensor, Reference | None]:
    """One pass over ``tokens``: the residual entering layer ``start`` and, unless ``kind`` is
    ``on_the_fly``, the original model's distributions at the positions ``select(lo, logits)`` picks."""
    resid, parts = [], []
    for lo in range(0, len(tokens), batch_size):
        r = residual_before(model, tokens[lo : lo + batch_size], start)
        resid.append(r)
        if kind != "on_the_fly":
            logits = head(model, run_from(model, r, start))
            parts.append(Reference.from_logits(select(lo, logits), top_k if kind == "top_k" else None,
                                               _DTYPES[kind]))
        bar.update(len(r))
    return torch.cat(resid), Reference.cat(parts) if parts else None


def _known_facts(model, batch: KGBatch, k: int = 10) -> tuple[int, int]:
    """How many triplets of ``batch`` have their gold tail in the model's top ``k`` under their best template."""
    ranks = score_kg(model, batch).rank
    best = torch.full((int(batch.triplet_index.max()) + 1,), k, dtype=torch.long)
    best.scatter_reduce_(0, batch.triplet_index.cpu(), ranks, reduce="amin")
    present = torch.zeros_like(best, dtype=torch.bool)
    present[batch.triplet_index.cpu()] = True
    return int((best[present] < k).sum()), int(present.sum())


def _prepare(model, target, control_kg, control_lm, cfg: DiscoveryConfig, device, start: int | None = None) -> _Data:
    """Encode, split and check every input, choose the teacher representation, then run the cached passes.

    Everything that can be wrong with the inputs is checked before the first
    forward pass over control data (the expensive part).
    """
    if start is None:
        start = min(s.layer for s in plan_sites(model, cfg.weights, cfg.hooks, cfg.layers, cfg.granularity).values())
    bos = cfg.bos(model)
    if isinstance(target, KnowledgeGraph) and isinstance(control_kg, KnowledgeGraph):
        check_disjoint(target, control_kg)
    t = _as_kg_batch(target, model, "target", bos).to(device)
    c_all = _as_kg_batch(control_kg, model, "control_kg", bos)
    overlap = set(t.sentences) & set(c_all.sentences)
    if overlap:
        raise ValueError(f"{len(overlap)} sentence(s) are in both target and control_kg, e.g. {sorted(overlap)[:3]}")
    c, c_val = (b.to(device) for b in _split_by_triplet(c_all, cfg.control_val_fraction, cfg.seed))
    lm, lm_val = (b.to(device) for b in split_blocks(_as_lm_blocks(control_lm, model, cfg.lm_block_len, bos),
                                                     cfg.lm_val_fraction, cfg.seed))
    plan = plan_reference(cfg.reference, int(c.label_mask.sum()), lm.numel(), model.cfg.d_vocab,
                          cfg.reference_top_k, cfg.reference_max_gib)
    per_block = activation_bytes(model, model.cfg.n_layers - start, lm.shape[1])
    chunk = max(1, int(cfg.lm_chunk_max_gib * 2**30 // per_block))
    known, n_facts = _known_facts(model, t)
    if known < 0.5 * n_facts:
        warnings.warn(f"discover: the model knows only {known} of {n_facts} TargetKG facts (gold tail in its top 10 "
                      "under the best template); suppressing facts it does not know means little", UserWarning)
    bar = tqdm(total=len(t) + len(c) + len(lm), desc="prepare", unit="row", disable=not cfg.progress)
    with bar:
        target_resid, _ = _cache(model, t.tokens, start, cfg.kg_batch_size, bar)
        control_resid, control_ref = _cache(model, c.tokens, start, cfg.kg_batch_size, bar,
                                            lambda lo, lg: lg[c.label_mask[lo : lo + len(lg)]],
                                            plan.control, plan.top_k)
        lm_resid, lm_ref = _cache(model, lm, start, cfg.lm_batch_size, bar, lambda lo, lg: lg.flatten(0, 1),
                                  plan.lm, plan.top_k)
    return _Data(
        target=t, control=c, control_val=c_val, lm=lm, lm_val=lm_val,
        control_ref=control_ref, control_ref_rows=torch.nonzero(c.label_mask)[:, 0],
        lm_ref=lm_ref, start=start, target_resid=target_resid, control_resid=control_resid, lm_resid=lm_resid,
        base_control_top1=kg_metrics(score_kg(model, c_val))["top1"],
        base_lm_ppl=lm_metrics(score_lm(model, lm_val))["ppl"],
        lm_chunk=chunk,
        setup={"prepend_bos": bos, "reference": plan.describe(), "target_known": f"{known}/{n_facts}",
               "lm_blocks_per_backward": min(chunk, cfg.lm_batch_size)},
    )


# -- one step ------------------------------------------------------------------


def _rows(n: int, size: int, gen: torch.Generator) -> Tensor:
    """A sorted random minibatch of row indices (sorted, so cached references line up)."""
    return torch.arange(n) if size >= n else torch.randperm(n, generator=gen)[:size].sort().values


def _losses(masked: MaskedModel, data: _Data, cfg: DiscoveryConfig, step: int, gen: torch.Generator,
            lagrangian: Lagrangian | None) -> dict[str, Tensor]:
    """All loss terms of one step, under one draw of the masks."""
    model = masked.model
    t_rows = _rows(len(data.target), cfg.kg_batch_size, gen)
    t = data.target[t_rows]
    c_rows = _rows(len(data.control), cfg.kg_batch_size, gen)
    c = data.control[c_rows]
    lm_rows = _rows(len(data.lm), cfg.lm_batch_size, gen).to(data.lm.device)
    t_width, c_width = t.tokens.shape[1], c.tokens.shape[1]
    out = {}
    t_resid = data.target_resid[t_rows.to(data.target_resid.device), :t_width]
    c_resid = data.control_resid[c_rows.to(data.control_resid.device), :c_width]
    with masked.step():
        # Only the masked layers run; the KG sentences are unembedded at tail-predicting positions only.
        final = run_from(model, _stack(t_resid, c_resid), data.start)
        t_logits = at_least_fp32(head(model, final[: len(t), :t_width][t.label_mask]))
        c_logits = at_least_fp32(head(model, final[len(t):, :c_width][c.label_mask]))
        out["target"] = suppression(t_logits, t.labels[t.label_mask], cfg.suppression, cfg.suppression_log_margin)
        if data.control_ref is None:
            ref = _teacher(masked, c_resid, data.start, c.label_mask)
        else:
            ref_rows = torch.isin(data.control_ref_rows, c_rows.to(data.control_ref_rows.device))
            ref = data.control_ref[torch.nonzero(ref_rows)[:, 0]]
        out["control_kg"] = ref.kl(c_logits).mean()
        chunks = lm_rows.split(data.lm_chunk)
        if len(chunks) == 1:
            out["control_lm"] = _lm_kl(masked, data, lm_rows) / lm_rows.numel() / data.lm.shape[1]
        else:  # each chunk's backward now, so only one chunk's activations are alive at a time
            n = lm_rows.numel() * data.lm.shape[1]
            out["control_lm"] = sum(_lm_kl(masked, data, rows, cfg.control_lm_weight / n) for rows in chunks) / n
        if cfg.expression_weight:
            with masked.as_mode("keep"):
                kept = at_least_fp32(model(t.tokens)[t.label_mask])
            out["expression"] = F.cross_entropy(kept, t.labels[t.label_mask])
    density = masked.expected_density()
    out["density"] = density
    if lagrangian is not None:
        out["sparsity"] = lagrangian(density)
    else:
        out["sparsity"] = sparsity_weight(step, cfg.steps, cfg.sparsity_start, cfg.sparsity_end) * density
    out["loss"] = (cfg.target_weight * out["target"] + cfg.control_kg_weight * out["control_kg"]
                   + cfg.control_lm_weight * out["control_lm"] + out["sparsity"]
                   + cfg.expression_weight * out.get("expression", 0.0))
    return out


def _lm_kl(masked: MaskedModel, data: _Data, lm_rows: Int[Tensor, "rows"],
           backward_weight: float | None = None) -> Float[Tensor, ""]:
    """Summed KL(original || masked) over the positions of LM blocks ``lm_rows``.

    With ``backward_weight`` the weighted sum is backpropagated at once (keeping the
    masks' graph for the other terms) and the sum comes back detached.
    """
    model = masked.model
    resid = data.lm_resid[lm_rows]
    logits = at_least_fp32(head(model, run_from(model, resid, data.start))).flatten(0, 1)
    if data.lm_ref is None:
        ref = _teacher(masked, resid, data.start)
    else:
        positions = (lm_rows[:, None] * data.lm.shape[1]
                     + torch.arange(data.lm.shape[1], device=lm_rows.device)).flatten()
        ref = data.lm_ref[positions]
    total = ref.kl(logits).sum()
    if backward_weight is None:
        return total
    (backward_weight * total).backward(retain_graph=True)
    return total.detach()


@torch.no_grad()
def _teacher(masked: MaskedModel, resid: Float[Tensor, "batch pos d_model"], start: int,
             positions: Bool[Tensor, "batch pos"] | None = None) -> Reference:
    """The original model's distributions, computed now (masks off) from cached residuals: ``on_the_fly``."""
    model = masked.model
    with masked.disabled():
        final = run_from(model, resid, start)
    final = final[positions] if positions is not None else final.flatten(0, 1)
    return Reference.from_logits(head(model, final), None)


# -- validation and checkpoint choice --------------------------------------------


@torch.no_grad()
def _validate(masked: MaskedModel, data: _Data, cfg: DiscoveryConfig) -> dict[str, float]:
    """Score the binary mask ``to_subnetwork()`` would return on validation data; lower ``shortfall`` is better."""
    with masked.binary():
        model = masked.model
        sparsity = masked.to_subnetwork().sparsity()
        target_top1 = kg_metrics(score_kg(model, data.target))["top1"]
        control_top1 = kg_metrics(score_kg(model, data.control_val))["top1"]
        lm_ppl = lm_metrics(score_lm(model, data.lm_val))["ppl"]
    ratio = control_top1 / data.base_control_top1 if data.base_control_top1 > 0 else 1.0
    rise = lm_ppl / data.base_lm_ppl - 1
    gaps = cfg.criteria.shortfalls(target_top1, ratio, rise, sparsity)
    return {"val_target_top1": target_top1, "val_control_top1_ratio": ratio,
            "val_lm_ppl_rise": rise, "val_sparsity": sparsity,
            "shortfall": sum(gaps.values()), "criteria_met": all(v == 0 for v in gaps.values())}


def _better(val: dict, best: dict | None) -> bool:
    """The checkpoint rule: meeting the criteria beats not; then higher sparsity, else lower shortfall."""
    if best is None:
        return True
    if val["criteria_met"] != best["criteria_met"]:
        return val["criteria_met"]
    if val["criteria_met"]:
        return val["val_sparsity"] > best["val_sparsity"]
    return val["shortfall"] < best["shortfall"]


# -- the loop ------------------------------------------------------------------


@dataclass
class _State:
    """What a checkpoint holds: enough to continue the same run."""

    step: int = 0
    history: list = field(default_factory=list)
    best: dict | None = None
    best_scores: dict | None = None


def _checkpoint_path(cfg: DiscoveryConfig) -> Path:
    return Path(cfg.checkpoint_dir) / "checkpoint.pt"


def _save_checkpoint(cfg, trained, optimizers, schedule, gen, state: _State) -> None:
    path = _checkpoint_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"config": cfg.to_json(), "trained": [m.state_dict() for m in trained],
               "optimizers": [o.state_dict() for o in optimizers], "schedule": schedule.state_dict(),
               "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
               "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
               "state": dataclasses.asdict(state)}
    with atomic_file(path) as tmp:
        torch.save(payload, tmp)


_CHECKPOINT_KEYS = ("config", "trained", "optimizers", "schedule", "generator", "torch_rng", "cuda_rng", "state")


def _read_checkpoint(path) -> dict:
    """A checkpoint's contents, read as tensors and plain data only: a file that would run code is refused."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(f"resume: {path} does not exist; give a checkpoint.pt or the checkpoint_dir "
                                "holding it")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
        lines = [line.strip() for line in str(err).splitlines()
                 if line.strip() and not line.strip().startswith(boilerplate)] or [type(err).__name__]
        code = next((line for line in lines if "GLOBAL" in line), None)  # a callable or class to import
        if code:
            raise ValueError(f"resume: {path} holds Python objects other than tensors and plain data ({code}); "
                             "kcs_tl refuses to load it, because unpickling them could run code") from None
        raise ValueError(f"resume: {path} is not a readable kcs_tl checkpoint ({lines[0][:200]})") from None
    if not isinstance(payload, dict) or any(k not in payload for k in _CHECKPOINT_KEYS):
        raise ValueError(f"resume: {path} is not a kcs_tl checkpoint (needs the entries {list(_CHECKPOINT_KEYS)})")
    return payload


def _load_checkpoint(path, cfg, trained, optimizers, schedule, gen) -> _State:
    payload = _read_checkpoint(path)
    try:
        saved = DiscoveryConfig.from_json(payload["config"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"resume: {path} holds an invalid config: {err}") from None
    ignore = {"steps", "checkpoint_every", "checkpoint_dir", "progress", "early_stop"}
    diff = [f.name for f in dataclasses.fields(cfg)
            if f.name not in ignore and getattr(saved, f.name) != getattr(cfg, f.name)]
    if diff:
        raise ValueError(f"checkpoint {path} was made with other settings: {diff}")
    for m, s in zip(trained, payload["trained"]):
        m.load_state_dict(s)
    for o, s in zip(optimizers, payload["optimizers"]):
        o.load_state_dict(s)
    schedule.load_state_dict(payload["schedule"])
    gen.set_state(payload["generator"])
    torch.set_rng_state(payload["torch_rng"])
    if payload["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["cuda_rng"])
    return _State(**payload["state"])


def _checked(config: DiscoveryConfig | None) -> DiscoveryConfig:
    """A validated copy: settings edited after the config was made are checked again."""
    if config is None:
        return DiscoveryConfig()
    if not isinstance(config, DiscoveryConfig):
        raise TypeError(f"config must be a DiscoveryConfig (DiscoveryConfig(**settings)), got {validate.given(config)}")
    return dataclasses.replace(config)


def _device(cfg: DiscoveryConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {cfg.device!r} asked for, but CUDA is not available; use 'cpu' or 'auto'")
    if cfg.device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' asked for, but MPS is not available; use 'cpu' or 'auto'")
    return torch.device(cfg.device)


def _nonfinite(modules, grads: bool) -> list[str]:
    """The trained tensors (or their gradients) holding NaN or inf, as 'what (k of n values)'."""
    named = [(n, p.grad if grads else p) for m in modules for n, p in m.named_parameters() if p.requires_grad]
    named = [(n, t) for n, t in named if t is not None]
    if not named or bool(torch.stack([t.isfinite().all() for _, t in named]).all()):
        return []
    out = []
    for n, t in named:
        bad = int((~t.isfinite()).sum())
        if bad:
            what = (f"mask scores of {n.removeprefix('scores.').replace('__', '.')}" if n.startswith("scores.")
                    else f"ablation values of {n.removeprefix('replacements.').replace('__', '.')}"
                    if n.startswith("replacements.") else f"Lagrangian multiplier {n}")
            out.append(f"{what} ({bad} of {t.numel()} values)")
    return out


class Search:
    """A search's working state: attached masks, cached original outputs, optimisers.

    ``discover`` drives it; ``step()`` is one optimisation step, the unit that
    ``benchmarks/step_cost.py`` times. ``close()`` (or leaving a ``with`` block)
    detaches the masks.
    """

    def __init__(self, model, target, control_kg, control_lm, config: DiscoveryConfig | None = None):
        self.cfg = cfg = _checked(config)
        check_model(model)
        # Every setting is checked against this model before anything expensive runs.
        fields = tuple(f"DiscoveryConfig.{f}" for f in ("weights", "hooks", "layers"))
        sites = plan_sites(model, cfg.weights, cfg.hooks, cfg.layers, cfg.granularity, fields)
        self.device = _device(cfg)
        relaxation = get_relaxation(cfg.relaxation, **cfg.relaxation_options)
        if cfg.checkpoint_every:
            writable_folder(cfg.checkpoint_dir)
        # From here on the model changes (device, then masks); any exception puts it back as it was.
        home, self.masked = next(model.parameters()).device, None
        try:
            if home != self.device:
                model.to(self.device)
            self.data = _prepare(model, target, control_kg, control_lm, cfg, self.device,
                                 min(s.layer for s in sites.values()))
            self.lagrangian = (Lagrangian(1 - cfg.target_sparsity).to(self.device)
                               if cfg.target_sparsity is not None else None)
            self.gen = torch.Generator().manual_seed(cfg.seed)
            self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                             if cfg.bf16 and self.device.type == "cuda" else nullcontext())
            self.state = _State()
            self.fault: str | None = None  # why the search cannot go on (non-finite values)
            # Masks attach last, once every setting has been used without error.
            self.masked = MaskedModel(model, weights=cfg.weights, hooks=cfg.hooks, layers=cfg.layers,
                                      granularity=cfg.granularity, init_prob=cfg.init_prob,
                                      relaxation=relaxation).train()
            self.optimizers = [torch.optim.Adam([p for p in self.masked.parameters() if p.requires_grad],
                                                lr=cfg.lr)]
            if self.lagrangian is not None:
                self.optimizers.append(torch.optim.Adam(self.lagrangian.parameters(), lr=cfg.lagrangian_lr,
                                                        maximize=True))
            warmup = max(1, round(cfg.warmup_fraction * cfg.steps))
            self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizers[0],
                                                              lambda s: min(1.0, (s + 1) / warmup))
            self.trained = [self.masked] + ([self.lagrangian] if self.lagrangian is not None else [])
        except BaseException:
            if self.masked is not None:
                self.masked.detach()
            if home != self.device:
                model.to(home)
            raise

    def step(self) -> dict[str, Tensor]:
        """One optimisation step.

        A non-finite loss or gradient updates nothing and sets ``fault`` (which
        values went non-finite), so the masks stay at their last finite state.
        """
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)
        with self.autocast:
            terms = _losses(self.masked, self.data, self.cfg, self.state.step, self.gen, self.lagrangian)
        if not torch.isfinite(terms["loss"]):
            self.fault = (f"non-finite loss at step {self.state.step} "
                          f"(terms: { {k: float(v.detach()) for k, v in terms.items()} })")
            return terms
        terms["loss"].backward()
        bad = _nonfinite(self.trained, grads=True)
        if bad:
            self.fault = f"non-finite gradients at step {self.state.step} in " + ", ".join(bad)
            return terms
        for o in self.optimizers:
            o.step()
        self.schedule.step()
        self.state.step += 1
        return terms

    def validate(self) -> dict:
        """Score the binary masks that would be returned; keep them if they are the best so far.

        Masks holding non-finite values are not scored: ``fault`` says which, and the
        best checkpoint stays what it was.
        """
        self.masked.check_frozen()
        bad = _nonfinite(self.trained, grads=False)
        if bad:
            self.fault = f"non-finite values at step {self.state.step} in " + ", ".join(bad)
            return {}
        val = _validate(self.masked, self.data, self.cfg)
        if _better(val, self.state.best):
            self.state.best = {"step": self.state.step, **val}
            self.state.best_scores = {k: v.detach().clone() for k, v in self.masked.state_dict().items()}
        return val

    def save_checkpoint(self) -> None:
        _save_checkpoint(self.cfg, self.trained, self.optimizers, self.schedule, self.gen, self.state)

    def load_checkpoint(self, path) -> None:
        self.state = _load_checkpoint(path, self.cfg, self.trained, self.optimizers, self.schedule, self.gen)

    def result(self, stopped: str) -> Discovery:
        """The chosen checkpoint (see the module docstring) as a Discovery."""
        if self.state.best is None:  # stopped before the first validation: judge the current masks
            self.validate()
        if self.state.best is None:
            raise RuntimeError(f"discover: no finite masks to return ({self.fault}); lower lr or check "
                               "the relaxation options")
        self.masked.load_state_dict(self.state.best_scores)
        best = self.state.best
        sub = self.masked.to_subnetwork(config=self.cfg.to_json(), best_step=best["step"], stopped=stopped,
                                        **self.data.setup)
        return Discovery(sub, pd.DataFrame(self.state.history), self.cfg, best["step"],
                         bool(best["criteria_met"]), stopped, dict(self.data.setup))

    def close(self) -> None:
        self.masked.detach()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def discover(model, target, control_kg, control_lm, config: DiscoveryConfig | None = None,
             resume: str | os.PathLike | None = None) -> Discovery:
    """Find the subnetwork whose removal makes ``model`` forget ``target`` and keep the rest.

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge`` with a tokenizer; moved to the search's device.
        target: the TargetKG (``KnowledgeGraph`` or ``KGBatch``) to suppress.
        control_kg: the ControlKG to maintain; must not share triplets with ``target``.
        control_lm: LM text to maintain: token blocks ``[n, block_len]`` or a list of strings.
        config: a ``DiscoveryConfig``; defaults follow the paper.
        resume: a checkpoint file or folder written by an earlier run with the same config.

    Ctrl-C stops the search and returns the best result so far. A non-finite loss,
    gradient or mask score stops it with a warning that names the values; the
    result is then the best checkpoint before that step. The global RNG is left as
    it was, and the model as it was found (also when anything raises).
    """
    cfg = _checked(config)
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(cfg.seed)
        with Search(model, target, control_kg, control_lm, cfg) as search:
            if resume:
                search.load_checkpoint(resume)
            return search.result(_run(search))


def _run(search: Search) -> str:
    """Drive ``search`` to its end; returns why it stopped."""
    cfg, state = search.cfg, search.state
    bar = tqdm(total=cfg.steps, initial=state.step, disable=not cfg.progress, desc="discover")
    try:
        while state.step < cfg.steps:
            terms = search.step()
            if search.fault:
                return _stop_on_fault(search)
            row = {"step": state.step, **{k: float(v.detach()) for k, v in terms.items()}}
            if state.step % cfg.eval_every == 0 or state.step == cfg.steps:
                row |= search.validate()
                if search.fault:
                    return _stop_on_fault(search)
                bar.set_postfix(target=f"{row['val_target_top1']:.2f}", sparsity=f"{row['val_sparsity']:.4f}",
                                loss=f"{row['loss']:.3f}")
            state.history.append(row)
            bar.update()
            if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
                search.save_checkpoint()
            if cfg.early_stop and row.get("criteria_met"):
                return f"criteria met at step {state.step}"
        return "completed all steps"
    except KeyboardInterrupt:
        stopped = f"interrupted at step {state.step}; returning the best result so far"
        warnings.warn(f"discover: {stopped}", RuntimeWarning)
        return stopped
    finally:
        bar.close()


def _stop_on_fault(search: Search) -> str:
    """Stop at the last finite checkpoint, saying which values went non-finite."""
    best = search.state.best
    kept = (f"the result is the best checkpoint before it (step {best['step']})" if best is not None
            else "the result is the masks before that step")
    stopped = f"{search.fault}; stopped, {kept}"
    warnings.warn(f"discover: {stopped}", RuntimeWarning)
    return stopped
