"""From the user's inputs to the search's data: encode, split and check them, then run the cached passes.

The layers below the first masked one never change during the search, and
neither do the original model's outputs, so the residual stream entering the
masked layers and (within a memory budget, ``teacher``) the original outputs are
computed once here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from kcs_tl import validate
from kcs_tl.adapters import activation_bytes, residual_before, run_from, to_logits
from kcs_tl.data.batch import KGBatch
from kcs_tl.data.kg import KnowledgeGraph
from kcs_tl.data.lm import model_lm_blocks, split_blocks
from kcs_tl.data.splits import check_disjoint, holdout
from kcs_tl.data.verbalise import encode
from kcs_tl.discovery.config import DiscoveryConfig
from kcs_tl.discovery.teacher import TeacherOutputs, plan_teacher
from kcs_tl.masks.masked_model import plan_sites
from kcs_tl.evaluation import kg_metrics, lm_metrics, score_kg, score_lm
from kcs_tl.validate import InputError, InputTypeError, InputValueError


def _tokenizer(model, what: str):
    if model.tokenizer is None:
        raise InputValueError(f"{what} needs tokenising but the model has no tokenizer; pass one to "
                              "HookedTransformer(cfg, tokenizer=...) or give pre-tokenised inputs")
    return model.tokenizer


def _as_kg_batch(data, model, what: str, prepend_bos: bool) -> KGBatch:
    if isinstance(data, KnowledgeGraph):
        data = encode(data, _tokenizer(model, what), "train", prepend_bos=prepend_bos)
    if not isinstance(data, KGBatch):
        raise InputTypeError(f"{what} must be a KnowledgeGraph or a KGBatch, got {type(data).__name__}")
    return validate.kg_batch(what, data, model)


def _as_lm_blocks(data, model, block_len: int, prepend_bos: bool) -> Int[Tensor, "n block"]:
    if not isinstance(data, Tensor):
        try:
            data = model_lm_blocks(data, model, block_len, prepend_bos)
        except InputError as err:
            raise type(err)(f"control_lm: {err}") from None
    validate.tokens("control_lm", data, model)
    if len(data) < 2:
        raise InputValueError(f"control_lm needs at least 2 token blocks [n, block_len], got {tuple(data.shape)}")
    return data


def _split_by_triplet(batch: KGBatch, fraction: float, seed: int) -> tuple[KGBatch, KGBatch]:
    """Train/validation rows with every triplet's sentences on one side only."""
    triplets = batch.triplet_index.unique()
    if len(triplets) < 2:
        raise InputValueError("control_kg needs at least 2 triplets to hold some out for validation")
    _, held = holdout(len(triplets), fraction, seed)
    val = torch.isin(batch.triplet_index, triplets[held])
    return batch[torch.nonzero(~val)[:, 0]], batch[torch.nonzero(val)[:, 0]]


@dataclass
class SearchData:
    """Everything a step and a validation read, on the search's device."""

    target: KGBatch
    control: KGBatch
    control_val: KGBatch
    lm: Int[Tensor, "n block"]
    lm_val: Int[Tensor, "n block"]
    control_teacher: TeacherOutputs | None  # per control label position, in row order; None: computed each step
    control_teacher_rows: Int[Tensor, "n_labels"]
    lm_teacher: TeacherOutputs | None  # per LM position, block-major; None: computed each step
    start: int  # first masked layer: below it nothing changes during the search
    target_resid: Float[Tensor, "n_target pos d_model"]  # residual stream entering ``start``
    control_resid: Float[Tensor, "n_control pos d_model"]
    lm_resid: Float[Tensor, "n_lm block d_model"]
    base_target_top1: float  # the original model's, on ``target``: where forgetting starts from
    base_control_top1: float
    base_lm_ppl: float
    lm_chunk: int = 1 << 30  # LM blocks per forward/backward within a step
    setup: dict = field(default_factory=dict)


_DTYPES = {"full": torch.float32, "fp16": torch.float16, "top_k": torch.float32}


@torch.no_grad()
def _cache(model, tokens: Tensor, start: int, batch_size: int, bar, select=None, kind: str = "on_the_fly",
           top_k: int = 0) -> tuple[Tensor, TeacherOutputs | None]:
    """One pass over ``tokens``: the residual entering layer ``start`` and, unless ``kind`` is
    ``on_the_fly``, the original model's distributions at the positions ``select(lo, logits)`` picks."""
    resid, parts = [], []
    for lo in range(0, len(tokens), batch_size):
        r = residual_before(model, tokens[lo : lo + batch_size], start)
        resid.append(r)
        if kind != "on_the_fly":
            logits = to_logits(model, run_from(model, r, start))
            parts.append(TeacherOutputs.from_logits(select(lo, logits), top_k if kind == "top_k" else None,
                                               _DTYPES[kind]))
        bar.update(len(r))
    return torch.cat(resid), TeacherOutputs.cat(parts) if parts else None


def count_known_facts(model, batch: KGBatch, k: int = 10) -> tuple[int, int]:
    """How many triplets of ``batch`` have their gold tail in the model's top ``k`` under their best template."""
    ranks = score_kg(model, batch).rank
    best = torch.full((int(batch.triplet_index.max()) + 1,), k, dtype=torch.long)
    best.scatter_reduce_(0, batch.triplet_index.cpu(), ranks, reduce="amin")
    present = torch.zeros_like(best, dtype=torch.bool)
    present[batch.triplet_index.cpu()] = True
    return int((best[present] < k).sum()), int(present.sum())


def prepare(model, target, control_kg, control_lm, cfg: DiscoveryConfig, device,
            start: int | None = None) -> SearchData:
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
        raise InputValueError(f"{len(overlap)} sentence(s) are in both target and control_kg, "
                              f"e.g. {sorted(overlap)[:3]}")
    c, c_val = (b.to(device) for b in _split_by_triplet(c_all, cfg.control_val_fraction, cfg.seed))
    lm, lm_val = (b.to(device) for b in split_blocks(_as_lm_blocks(control_lm, model, cfg.lm_block_len, bos),
                                                     cfg.lm_val_fraction, cfg.seed))
    plan = plan_teacher(cfg.teacher, int(c.label_mask.sum()), lm.numel(), model.cfg.d_vocab,
                        cfg.teacher_top_k, cfg.teacher_max_gib)
    per_block = activation_bytes(model, model.cfg.n_layers - start, lm.shape[1])
    chunk = max(1, int(cfg.lm_chunk_max_gib * 2**30 // per_block))
    known, n_facts = count_known_facts(model, t)
    if known < 0.5 * n_facts:
        warnings.warn(f"discover: the model knows only {known} of {n_facts} TargetKG facts (gold tail in its top 10 "
                      "under the best template); suppressing facts it does not know means little", UserWarning)
    bar = tqdm(total=len(t) + len(c) + len(lm), desc="prepare", unit="row", disable=not cfg.progress)
    with bar:
        target_resid, _ = _cache(model, t.tokens, start, cfg.kg_batch_size, bar)
        control_resid, control_teacher = _cache(model, c.tokens, start, cfg.kg_batch_size, bar,
                                                lambda lo, lg: lg[c.label_mask[lo : lo + len(lg)]],
                                                plan.control, plan.top_k)
        lm_resid, lm_teacher = _cache(model, lm, start, cfg.lm_batch_size, bar, lambda lo, lg: lg.flatten(0, 1),
                                      plan.lm, plan.top_k)
    return SearchData(
        target=t, control=c, control_val=c_val, lm=lm, lm_val=lm_val,
        control_teacher=control_teacher, control_teacher_rows=torch.nonzero(c.label_mask)[:, 0],
        lm_teacher=lm_teacher, start=start, target_resid=target_resid, control_resid=control_resid, lm_resid=lm_resid,
        base_target_top1=kg_metrics(score_kg(model, t))["top1"],
        base_control_top1=kg_metrics(score_kg(model, c_val))["top1"],
        base_lm_ppl=lm_metrics(score_lm(model, lm_val))["ppl"],
        lm_chunk=chunk,
        setup={"prepend_bos": bos, "teacher": plan.describe(), "target_known": f"{known}/{n_facts}",
               "lm_blocks_per_backward": min(chunk, cfg.lm_batch_size)},
    )
