"""The loss terms of the search: suppression, maintenance, sparsity, expression.

All KG terms read the logits at the positions that PREDICT a tail token (the
position before it); the published training code read the tail's own position.
KL(U || p) is computed in closed form, ``-log V - mean_v log p_v``, so no
``[N, vocab]`` uniform tensor is ever built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

SUPPRESSIONS = ("kl_uniform", "entropy", "margin")


def kl_uniform(logp: Float[Tensor, "n vocab"]) -> Float[Tensor, "n"]:
    """KL(U || p) per row, U uniform over the vocabulary, without materialising U."""
    return -math.log(logp.shape[-1]) - logp.mean(-1)


def neg_entropy(logp: Float[Tensor, "n vocab"]) -> Float[Tensor, "n"]:
    """-H(p) per row: minimising it maximises the entropy."""
    return (logp.exp() * logp).sum(-1)


def margin(logp: Float[Tensor, "n vocab"], gold: Int[Tensor, "n"], log_margin: float) -> Float[Tensor, "n"]:
    """How far the gold token's log-probability sits above ``log_margin`` (0 once below)."""
    return F.relu(logp.gather(-1, gold[:, None])[:, 0] - log_margin)


def suppression(logp: Float[Tensor, "n vocab"], gold: Int[Tensor, "n"], kind: str = "kl_uniform",
                log_margin: float = math.log(1e-3)) -> Tensor:
    """Mean suppression loss on TargetKG label positions."""
    if kind == "kl_uniform":
        return kl_uniform(logp).mean()
    if kind == "entropy":
        return neg_entropy(logp).mean()
    if kind == "margin":
        return margin(logp, gold, log_margin).mean()
    raise ValueError(f"unknown suppression {kind!r}; choose from {SUPPRESSIONS}")


@dataclass
class ReferenceLogProbs:
    """The original model's log-probabilities at some positions, cached once.

    ``indices is None``: full distributions. Otherwise the top-k tokens and their
    log-probabilities; the rest of the vocabulary is one bucket, so the KL is
    the exact KL between the two distributions coarsened to k + 1 outcomes (a
    lower bound on the full KL that is tight when the top k hold the mass).
    """

    logp: Float[Tensor, "n k"]
    indices: Int[Tensor, "n k"] | None = None

    @classmethod
    def from_logits(cls, logits: Float[Tensor, "n vocab"], top_k: int | None) -> "ReferenceLogProbs":
        logp = logits.float().log_softmax(-1)
        if top_k is None or top_k >= logp.shape[-1]:
            return cls(logp)
        values, indices = logp.topk(top_k, dim=-1)
        return cls(values, indices)

    def __getitem__(self, rows) -> "ReferenceLogProbs":
        return ReferenceLogProbs(self.logp[rows], None if self.indices is None else self.indices[rows])

    def to(self, device) -> "ReferenceLogProbs":
        return ReferenceLogProbs(self.logp.to(device), None if self.indices is None else self.indices.to(device))

    def kl(self, logq: Float[Tensor, "n vocab"]) -> Float[Tensor, "n"]:
        """KL(p_reference || q) per row."""
        if self.indices is None:
            return (self.logp.exp() * (self.logp - logq)).sum(-1)
        q_top = logq.gather(-1, self.indices)
        p_top = self.logp.exp()
        kl_top = (p_top * (self.logp - q_top)).sum(-1)
        p_rest = (1 - p_top.sum(-1)).clamp_min(1e-12)
        q_rest = (1 - q_top.exp().sum(-1)).clamp_min(1e-12)
        return kl_top + p_rest * (p_rest.log() - q_rest.log())


def sparsity_weight(step: int, total: int, start: float = 2.0, end: float = 3.0) -> float:
    """The paper's schedule: ``start`` for the first half, rising linearly to ``end``."""
    half = total / 2
    if step <= half:
        return start
    return start + (end - start) * (step - half) / max(total - half, 1)


class Lagrangian(nn.Module):
    """Holds expected density at a target: ``l1 * (d - t) + l2 * (d - t)**2``.

    The multipliers are trained by gradient ascent (Edge Pruning's scheme): pass
    ``multipliers()`` to an optimiser with ``maximize=True``.
    """

    def __init__(self, target_density: float):
        super().__init__()
        if not 0 <= target_density <= 1:
            raise ValueError(f"target density must lie in [0, 1], got {target_density}")
        self.target = target_density
        self.l1 = nn.Parameter(torch.zeros(()))
        self.l2 = nn.Parameter(torch.zeros(()))

    def forward(self, density: Tensor) -> Tensor:
        gap = density - self.target
        return self.l1 * gap + self.l2 * gap * gap
