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

from kcs_tl.precision import at_least_fp32

SUPPRESSIONS = ("kl_uniform", "entropy", "margin")


def kl_uniform(logits: Float[Tensor, "n vocab"]) -> Float[Tensor, "n"]:
    """KL(U || softmax(logits)) per row, U uniform: ``logsumexp - mean(logits) - log V``.

    No uniform tensor and no log-softmax copy of the logits is built.
    """
    return logits.logsumexp(-1) - logits.mean(-1) - math.log(logits.shape[-1])


def neg_entropy(logits: Float[Tensor, "n vocab"]) -> Float[Tensor, "n"]:
    """-H(p) per row: minimising it maximises the entropy."""
    logp = logits.log_softmax(-1)
    return (logp.exp() * logp).sum(-1)


def margin(logits: Float[Tensor, "n vocab"], gold: Int[Tensor, "n"], log_margin: float) -> Float[Tensor, "n"]:
    """How far the gold token's log-probability sits above ``log_margin`` (0 once below)."""
    gold_logp = logits.gather(-1, gold[:, None])[:, 0] - logits.logsumexp(-1)
    return F.relu(gold_logp - log_margin)


def suppression(logits: Float[Tensor, "n vocab"], gold: Int[Tensor, "n"], kind: str = "kl_uniform",
                log_margin: float = math.log(1e-3)) -> Tensor:
    """Mean suppression loss on TargetKG label positions."""
    if kind == "kl_uniform":
        return kl_uniform(logits).mean()
    if kind == "entropy":
        return neg_entropy(logits).mean()
    if kind == "margin":
        return margin(logits, gold, log_margin).mean()
    raise ValueError(f"unknown suppression {kind!r}; choose from {SUPPRESSIONS}")


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise dot product as a batched matmul, without an [n, vocab] product temporary."""
    return (a[:, None, :] @ b[:, :, None])[:, 0, 0]


@dataclass
class Reference:
    """The original model's output distributions at some positions, cached once.

    Full (``indices is None``): ``probs`` over the vocabulary (fp32, or fp16 to
    halve the memory) and each row's ``neg_entropy``, so
    ``KL(p || q) = -H(p) + logsumexp(z) - p . z`` for new logits z, with no
    log-softmax of z. Top-k: the k most likely tokens'
    probabilities, the rest of the vocabulary one bucket; the KL is then the
    exact KL between the two distributions coarsened to k + 1 outcomes (a lower
    bound on the full KL, tight when the top k hold the mass).
    """

    probs: Float[Tensor, "n k"]
    neg_entropy: Float[Tensor, "n"]
    indices: Int[Tensor, "n k"] | None = None

    @classmethod
    def from_logits(cls, logits: Float[Tensor, "n vocab"], top_k: int | None,
                    dtype: torch.dtype = torch.float32) -> "Reference":
        """The distribution of ``logits``: all of it, or its ``top_k`` tokens; ``probs`` stored as ``dtype``."""
        logp = at_least_fp32(logits).log_softmax(-1)
        if top_k is not None and top_k < logp.shape[-1]:
            logp, indices = logp.topk(top_k, dim=-1)
        else:
            indices = None
        probs = logp.exp()
        if indices is None and dtype != torch.float32:  # the entropy of the rounded probabilities, so KL(p, p) = 0
            probs = probs.to(dtype).float()
            logp = probs.clamp_min(torch.finfo(torch.float32).tiny).log()
        return cls(probs.to(dtype), (probs * logp).sum(-1), indices)

    @classmethod
    def cat(cls, parts: list["Reference"]) -> "Reference":
        return cls(torch.cat([p.probs for p in parts]), torch.cat([p.neg_entropy for p in parts]),
                   None if parts[0].indices is None else torch.cat([p.indices for p in parts]))

    def __getitem__(self, rows) -> "Reference":
        return Reference(self.probs[rows], self.neg_entropy[rows],
                         None if self.indices is None else self.indices[rows])

    def kl(self, logits: Float[Tensor, "n vocab"]) -> Float[Tensor, "n"]:
        """KL(p_reference || softmax(logits)) per row."""
        lse = logits.logsumexp(-1)
        probs = self.probs.to(logits.dtype)
        if self.indices is None:  # rounded (fp16) probabilities may not sum to 1: weight the lse by their mass
            mass = probs.sum(-1) if self.probs.dtype != torch.float32 else 1.0
            return self.neg_entropy + mass * lse - _rowdot(probs, logits)
        logq_top = logits.gather(-1, self.indices) - lse[:, None]
        p_rest = (1 - probs.sum(-1)).clamp_min(1e-12)
        q_rest = (1 - logq_top.exp().sum(-1)).clamp_min(1e-12)
        return (self.neg_entropy - _rowdot(probs, logq_top)
                + p_rest * (p_rest.log() - q_rest.log()))


def sparsity_weight(step: int, total: int, start: float = 2.0, end: float = 3.0) -> float:
    """The paper's schedule: ``start`` for the first half, rising linearly to ``end``."""
    half = total / 2
    if step <= half:
        return start
    return start + (end - start) * (step - half) / max(total - half, 1)


class Lagrangian(nn.Module):
    """Holds expected density at a target: ``l1 * (d - t) + l2 * (d - t)**2``.

    The multipliers are trained by gradient ascent (Edge Pruning's scheme): pass
    ``parameters()`` to an optimiser with ``maximize=True``.
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
