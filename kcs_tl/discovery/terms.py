"""The loss terms of the search: suppression and sparsity (maintenance is ``teacher.TeacherOutputs.kl``).

All KG terms read the logits at the positions that PREDICT a tail token (the
position before it); the published training code read the tail's own position.
KL(U || p) is computed in closed form, ``-log V - mean_v log p_v``, so no
``[N, vocab]`` uniform tensor is ever built.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from kcs_tl.validate import InputValueError

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
    raise InputValueError(f"unknown suppression {kind!r}; choose from {SUPPRESSIONS}")


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
            raise InputValueError(f"target density must lie in [0, 1], got {target_density}")
        self.target = target_density
        self.l1 = nn.Parameter(torch.zeros(()))
        self.l2 = nn.Parameter(torch.zeros(()))

    def forward(self, density: Tensor) -> Tensor:
        gap = density - self.target
        return self.l1 * gap + self.l2 * gap * gap
