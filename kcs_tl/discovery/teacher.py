"""How the search keeps the original model's outputs (the teacher of its KL terms), within a memory budget.

A kept output is a ``TeacherOutputs``; ``plan_teacher`` picks its form.

The ControlKG and ControlLM terms compare the masked model with the original
one at every control position. The original's outputs never change, so the
search computes them once, unless they would not fit. A cached output costs,
per position, with V the vocabulary size:

======================  ===============  =============================================
representation          bytes/position   the KL it gives
======================  ===============  =============================================
``full``  (fp32)        4 V + 4          exact
``fp16``                2 V + 4          exact up to fp16 rounding of probabilities
``top_k`` (k tokens)    12 k + 4         exact KL of the two distributions coarsened
                                         to k + 1 outcomes (the rest folded into one)
``on_the_fly``          0                exact; each step runs the masked layers once
                                         more, without masks and without gradients
======================  ===============  =============================================

``teacher="auto"`` (the default) takes, for all control positions together,
the first of ``full``, ``fp16``, ``top_k`` whose cache fits in
``teacher_max_gib``; when none does, LM positions are computed on the fly
and the (few) ControlKG positions take the first that fits on their own
(on the fly too if nothing does). Any other value forces that representation,
and a cache that would not fit is refused before any forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from kcs_tl.precision import at_least_fp32
from kcs_tl.validate import InputValueError

TEACHERS = ("auto", "full", "fp16", "top_k", "on_the_fly")
_CACHED = ("full", "fp16", "top_k")
GIB = 2**30


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise dot product as a batched matmul, without an [n, vocab] product temporary."""
    return (a[:, None, :] @ b[:, :, None])[:, 0, 0]


@dataclass
class TeacherOutputs:
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
        return TeacherOutputs(self.probs[rows], self.neg_entropy[rows],
                         None if self.indices is None else self.indices[rows])

    def kl(self, logits: Float[Tensor, "n vocab"]) -> Float[Tensor, "n"]:
        """KL(p_teacher || softmax(logits)) per row."""
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


def bytes_per_position(kind: str, vocab: int, top_k: int) -> int:
    """Memory one cached position takes in representation ``kind`` (``on_the_fly``: none)."""
    k = min(top_k, vocab)
    return {"full": 4 * vocab + 4, "fp16": 2 * vocab + 4, "top_k": 12 * k + 4, "on_the_fly": 0}[kind]


@dataclass(frozen=True)
class TeacherPlan:
    """Which representation the ControlKG and the ControlLM teachers use, and what the cache costs."""

    control: str
    lm: str
    top_k: int
    gib: float
    """Memory the cached teachers take."""
    estimates: dict[str, float]
    """GiB each cached representation would take for all control positions."""

    def describe(self) -> str:
        def one(kind: str) -> str:
            return f"top_k (k={self.top_k})" if kind == "top_k" else kind

        parts = (f"control_kg {one(self.control)}, control_lm {one(self.lm)}" if self.control != self.lm
                 else one(self.control))
        return f"{parts}: {self.gib:.3g} GiB cached"


def plan_teacher(mode: str, n_control: int, n_lm: int, vocab: int, top_k: int,
                 max_gib: float) -> TeacherPlan:
    """The representation for ``n_control`` ControlKG and ``n_lm`` ControlLM positions (see the module rule)."""
    def gib(kind: str, n: int) -> float:
        return n * bytes_per_position(kind, vocab, top_k) / GIB

    n = n_control + n_lm
    estimates = {kind: gib(kind, n) for kind in _CACHED}
    if mode != "auto":
        if mode != "on_the_fly" and estimates[mode] > max_gib:
            raise InputValueError(f"teacher={mode!r}: caching the original model's outputs at {n:,} positions "
                                  f"(vocabulary {vocab:,}) would take {estimates[mode]:.1f} GiB > teacher_max_gib="
                                  f"{max_gib:g}; use teacher='auto' (picks one that fits) or raise teacher_max_gib")
        return TeacherPlan(mode, mode, top_k, gib(mode, n), estimates)
    for kind in _CACHED:
        if estimates[kind] <= max_gib:
            return TeacherPlan(kind, kind, top_k, estimates[kind], estimates)
    control = next((kind for kind in _CACHED if gib(kind, n_control) <= max_gib), "on_the_fly")
    return TeacherPlan(control, "on_the_fly", top_k, gib(control, n_control), estimates)
