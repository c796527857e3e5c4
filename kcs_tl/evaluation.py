"""Evaluation: how the model with a subnetwork removed compares with the original.

KG sets are scored at the positions that predict tail tokens: perplexity over
tail tokens, and rank / log-probability / top-k accuracy of each sentence's
first tail token. LM text is scored at every position. ``evaluate`` puts the
original, the remaining model and random subnetworks of the same size side by
side in one tidy DataFrame.
"""

from __future__ import annotations

import html
import math
from contextlib import nullcontext
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from kcs_tl import validate
from kcs_tl.adapters import model_device
from kcs_tl.baselines.random import random_like
from kcs_tl.data.batch import KGBatch
from kcs_tl.data.kg import KnowledgeGraph
from kcs_tl.data.verbalise import encode
from kcs_tl.subnetwork import Subnetwork
from kcs_tl.validate import InputTypeError

TOP_K = (1, 5, 10)


@dataclass
class KGScores:
    """Per tail token NLL, and per sentence the first tail token's rank (0 = top-1) and log-prob."""

    nll: Float[Tensor, "n_labels"]
    rank: Int[Tensor, "batch"]
    logp: Float[Tensor, "batch"]


@dataclass
class LMScores:
    """Per predicted token: NLL and whether the top-1 prediction was right."""

    nll: Float[Tensor, "n_tokens"]
    correct: Bool[Tensor, "n_tokens"]


@torch.no_grad()
def score_kg(model, batch: KGBatch, batch_size: int = 64) -> KGScores:
    """Score every sentence of ``batch`` under ``model``."""
    nll, rank, logp = [], [], []
    for lo in range(0, len(batch), batch_size):
        mb = batch[lo : lo + batch_size].to(model_device(model))
        lp = model(mb.tokens).float().log_softmax(-1)
        nll.append(-lp[mb.label_mask].gather(-1, mb.labels[mb.label_mask][:, None])[:, 0].cpu())
        rows = torch.arange(len(mb), device=lp.device)
        first = lp[rows, mb.first_label_pos]
        gold = mb.tokens[rows, mb.first_label_pos + 1]
        gold_lp = first.gather(-1, gold[:, None])
        rank.append((first > gold_lp).sum(-1).cpu())
        logp.append(gold_lp[:, 0].cpu())
    return KGScores(torch.cat(nll), torch.cat(rank), torch.cat(logp))


@torch.no_grad()
def score_lm(model, blocks: Int[Tensor, "n block"], batch_size: int = 8) -> LMScores:
    """Score every next-token prediction in ``blocks``."""
    nll, correct = [], []
    for lo in range(0, len(blocks), batch_size):
        tokens = blocks[lo : lo + batch_size].to(model_device(model))
        logits = model(tokens)[:, :-1].float()
        gold = tokens[:, 1:]
        nll.append(F.cross_entropy(logits.transpose(1, 2), gold, reduction="none").flatten().cpu())
        correct.append((logits.argmax(-1) == gold).flatten().cpu())
    return LMScores(torch.cat(nll), torch.cat(correct))


def kg_metrics(s: KGScores) -> dict[str, float]:
    out = {"ppl": math.exp(s.nll.mean().item())}
    out |= {f"top{k}": (s.rank < k).float().mean().item() for k in TOP_K}
    return out


def lm_metrics(s: LMScores) -> dict[str, float]:
    return {"ppl": math.exp(s.nll.mean().item()), "top1": s.correct.float().mean().item()}


def control_ratio(remaining_top1: float, original_top1: float) -> float:
    """ControlKG top-1 of the remaining model as a fraction of the original's: what the control criterion judges.

    The zero rule: when the original gets none of the control facts right
    (top-1 0) there is nothing to keep, so the ratio is 1 and the criterion
    holds without saying anything; choose control facts the model knows.
    """
    return remaining_top1 / original_top1 if original_top1 > 0 else 1.0


@dataclass
class Criteria:
    """What makes a subnetwork knowledge-critical: the thresholds each criterion must meet.

    ``shortfalls`` says how far each is from holding in one bounded unit, so that
    the checkpoint rule (``kcs_tl.discovery.selection``) and ``Evaluation.check()``
    judge with the same numbers.
    """

    target_top1_max: float = 0.10
    control_top1_min_ratio: float = 0.95
    lm_ppl_max_rise: float = 0.05
    sparsity_min: float = 0.98

    def __post_init__(self):
        for name in ("target_top1_max", "control_top1_min_ratio", "sparsity_min"):
            setattr(self, name, validate.number(f"Criteria.{name}", getattr(self, name), 0, 1))
        self.lm_ppl_max_rise = validate.number("Criteria.lm_ppl_max_rise", self.lm_ppl_max_rise, 0)

    def shortfalls(self, target_top1: float, control_top1_ratio: float, lm_ppl_rise: float, sparsity: float, *,
                   original_target_top1: float) -> dict[str, float]:
        """How far each criterion is from holding, in [0, 1]: 0 exactly when it holds, 1 at its worst.

        - target: the part of the way from the original's top-1 down to the threshold
          still to go, ``(t - max) / (max(t_original, t) - max)`` (1: forgot nothing);
        - control: ``(min_ratio - ratio) / min_ratio`` (1: keeps no control fact);
        - perplexity: ``(rise - max_rise) / (1 + rise)`` = ``1 - (1 + max_rise) / (1 + rise)``,
          the part of the perplexity above the allowed one (written without the
          cancellation, so a rise a hair above the allowed one still counts) (a rise of ``e`` beyond the allowed counts
          ``e / (e + 1 + max_rise)``: bounded, and defined for ``max_rise`` 0);
        - sparsity: ``(min - sparsity) / min`` (1: the subnetwork holds every unit).

        Each is monotone in its own number only, so summing them is monotone too.
        """
        t_max, c_min, s_min = self.target_top1_max, self.control_top1_min_ratio, self.sparsity_min
        return {
            "target_top1": (target_top1 - t_max) / (max(original_target_top1, target_top1) - t_max)
            if target_top1 > t_max else 0.0,
            "control_top1_ratio": (c_min - control_top1_ratio) / c_min if control_top1_ratio < c_min else 0.0,
            "lm_ppl_rise": (lm_ppl_rise - self.lm_ppl_max_rise) / (1 + lm_ppl_rise)
            if lm_ppl_rise > self.lm_ppl_max_rise else 0.0,
            "sparsity": (s_min - sparsity) / s_min if sparsity < s_min else 0.0,
        }


@dataclass(frozen=True)
class CriterionCheck:
    """One criterion on one result: the value judged, its threshold, and the margin by which it
    holds (>= 0) or fails (< 0), in the value's own units. True when it holds."""

    value: float
    side: str  # "<=": the threshold is an upper bound; ">=": a lower bound
    threshold: float
    holds: bool

    @property
    def margin(self) -> float:
        return self.threshold - self.value if self.side == "<=" else self.value - self.threshold

    def __bool__(self) -> bool:
        return self.holds

    def __str__(self) -> str:
        return (f"{self.value:.4f} (needs {self.side} {self.threshold:.4f}) {'holds' if self.holds else 'FAILS'}, "
                f"margin {self.margin:+.4f}")


@dataclass
class Evaluation:
    """Tidy results (``table``: set, model, metric, value, spread) and the subnetwork's size."""

    table: pd.DataFrame
    sparsity: float
    n_in_subnetwork: int

    def value(self, set_name: str, model: str, metric: str) -> float:
        t = self.table
        return float(t[(t.set == set_name) & (t.model == model) & (t.metric == metric)].value.iloc[0])

    def summary(self) -> pd.DataFrame:
        """One row per (set, model), one column per metric."""
        return self.table.pivot_table(index=["set", "model"], columns="metric", values="value",
                                      sort=False)

    def criterion_values(self) -> dict[str, float]:
        """What the criteria judge: the remaining model's target top-1, control top-1 ratio, LM perplexity rise;
        the sparsity."""
        v = self.value
        return {"target_top1": v("target", "remaining", "top1"),
                "control_ratio": control_ratio(v("control_kg", "remaining", "top1"),
                                               v("control_kg", "original", "top1")),
                "lm_ppl_rise": v("control_lm", "remaining", "ppl") / v("control_lm", "original", "ppl") - 1,
                "sparsity": self.sparsity}

    def check(self, criteria: Criteria | None = None) -> dict[str, CriterionCheck]:
        """Each criterion on the remaining model: value, threshold, margin, and whether it holds
        (judged by ``Criteria.shortfalls``, as the search judges its checkpoints)."""
        c = criteria or Criteria()
        values = self.criterion_values()
        gaps = c.shortfalls(*values.values(), original_target_top1=self.value("target", "original", "top1"))
        bounds = {"target_top1": ("<=", c.target_top1_max), "control_top1_ratio": (">=", c.control_top1_min_ratio),
                  "lm_ppl_rise": ("<=", c.lm_ppl_max_rise), "sparsity": (">=", c.sparsity_min)}
        return {name: CriterionCheck(value, *bounds[name], gap == 0)
                for (name, gap), value in zip(gaps.items(), values.values())}

    def criteria_line(self, criteria: Criteria | None = None) -> str:
        """One line with each criterion's value, threshold, verdict and margin, for logs and the command line."""
        return "criteria: " + "; ".join(f"{k} {check}" for k, check in self.check(criteria).items())

    def __repr__(self) -> str:
        with pd.option_context("display.width", 160, "display.max_columns", 20):
            table = self.summary().to_string(float_format=_number)
        return (f"Evaluation(sparsity {self.sparsity:.2%}, {self.n_in_subnetwork:,} units in the "
                f"subnetwork)\n{table}")

    def _repr_html_(self) -> str:
        checks = "".join(f"<li>{k}: {html.escape(str(check))}</li>" for k, check in self.check().items())
        return (f"<p><b>Subnetwork sparsity {self.sparsity:.2%}</b> "
                f"({self.n_in_subnetwork:,} units removed)</p><ul>{checks}</ul>"
                + self.summary().to_html(float_format=_number))


def _number(x: float) -> str:
    """Four decimals, or scientific notation for the huge perplexities of forgotten facts."""
    return f"{x:.4f}" if abs(x) < 1e5 else f"{x:.3e}"


def _rows(set_name: str, model_name: str, metrics: dict[str, float], spread: dict[str, float] | None = None):
    return [{"set": set_name, "model": model_name, "metric": k, "value": v,
             "spread": (spread or {}).get(k, 0.0)} for k, v in metrics.items()]


def _metrics(kind: str, s, base) -> dict[str, float]:
    """A set's metrics; KG sets add the mean change in gold rank and log-prob from ``base``."""
    if kind == "lm":
        return lm_metrics(s)
    return kg_metrics(s) | {"delta_rank": (s.rank - base.rank).float().mean().item(),
                            "delta_logp": (s.logp - base.logp).mean().item()}


def evaluate(model, subnetwork, target, control_kg, control_lm: Int[Tensor, "n block"], *,
             target_held_out: KGBatch | None = None, n_random: int = 3, seed: int = 0,
             batch_size: int = 64, prepend_bos: bool | None = None) -> Evaluation:
    """Original vs remaining model vs random subnetworks of the same size, on every set.

    ``target`` / ``control_kg`` / ``target_held_out`` are ``KGBatch``es or
    ``KnowledgeGraph``s (encoded with the model's tokenizer; a graph's held-out
    templates give ``target_held_out`` when it is not passed); ``control_lm``
    is a tensor of token blocks. Random subnetworks remove the same number of
    units per site (``n_random`` seeds; value is the mean, spread the std).
    Graphs are encoded with a BOS when ``prepend_bos`` says so (``None``: the
    model's ``cfg.default_prepend_bos``, as ``discover`` does).
    """
    if not isinstance(subnetwork, Subnetwork):
        raise InputTypeError(f"subnetwork must be a Subnetwork (e.g. Subnetwork.load(folder)), "
                             f"got {validate.given(subnetwork)}")
    subnetwork.check_model(model)
    n_random = validate.integer("n_random", n_random, 0)
    seed = validate.integer("seed", seed, 0)
    batch_size = validate.integer("batch_size", batch_size, 1)
    bos = model.cfg.default_prepend_bos if prepend_bos is None else validate.boolean("prepend_bos", prepend_bos)
    if isinstance(target, KnowledgeGraph) and target_held_out is None and target.held_out_templates:
        target_held_out = encode(target, model.tokenizer, "held_out", prepend_bos=bos)
    sets: dict[str, tuple[str, object]] = {
        "target": ("kg", _as_batch(target, model, "target", bos)),
        "control_kg": ("kg", _as_batch(control_kg, model, "control_kg", bos)),
        "control_lm": ("lm", validate.tokens("control_lm", control_lm, model)),
    }
    if target_held_out is not None:
        sets["target_held_out"] = ("kg", _as_batch(target_held_out, model, "target_held_out", bos))

    def run(ctx):
        with ctx:
            return {name: score_kg(model, data, batch_size) if kind == "kg" else
                    score_lm(model, data, max(1, batch_size // 8)) for name, (kind, data) in sets.items()}

    variants = {"original": [run(nullcontext())], "remaining": [run(subnetwork.removed(model))],
                "random": [run(random_like(subnetwork, seed + i).removed(model)) for i in range(n_random)]}
    base = variants["original"][0]
    rows = []
    for name, (kind, _) in sets.items():
        base_ppl = _metrics(kind, base[name], base[name])["ppl"]
        for variant, runs in variants.items():
            if not runs:
                continue
            frame = pd.DataFrame([_metrics(kind, r[name], base[name]) for r in runs])
            frame["delta_ppl"] = frame["ppl"] - base_ppl
            spread = frame.std(ddof=0).to_dict() if len(runs) > 1 else None
            rows += _rows(name, variant, frame.mean().to_dict(), spread)
    return Evaluation(pd.DataFrame(rows), subnetwork.sparsity(), subnetwork.n_in_subnetwork())


def _as_batch(data, model, name: str, prepend_bos: bool = True) -> KGBatch:
    batch = encode(data, model.tokenizer, prepend_bos=prepend_bos) if isinstance(data, KnowledgeGraph) else data
    if not isinstance(batch, KGBatch):
        raise InputTypeError(f"{name} must be a KnowledgeGraph or a KGBatch, got {validate.given(data)}")
    return validate.kg_batch(name, batch, model)

