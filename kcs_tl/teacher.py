"""How the search keeps the original model's outputs (the teacher of its KL terms), within a memory budget.

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

``reference="auto"`` (the default) takes, for all control positions together,
the first of ``full``, ``fp16``, ``top_k`` whose cache fits in
``reference_max_gib``; when none does, LM positions are computed on the fly
and the (few) ControlKG positions take the first that fits on their own
(on the fly too if nothing does). Any other value forces that representation,
and a cache that would not fit is refused before any forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

REFERENCES = ("auto", "full", "fp16", "top_k", "on_the_fly")
_CACHED = ("full", "fp16", "top_k")
GIB = 2**30


def bytes_per_position(kind: str, vocab: int, top_k: int) -> int:
    """Memory one cached position takes in representation ``kind`` (``on_the_fly``: none)."""
    k = min(top_k, vocab)
    return {"full": 4 * vocab + 4, "fp16": 2 * vocab + 4, "top_k": 12 * k + 4, "on_the_fly": 0}[kind]


@dataclass(frozen=True)
class ReferencePlan:
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


def plan_reference(mode: str, n_control: int, n_lm: int, vocab: int, top_k: int,
                   max_gib: float) -> ReferencePlan:
    """The representation for ``n_control`` ControlKG and ``n_lm`` ControlLM positions (see the module rule)."""
    def gib(kind: str, n: int) -> float:
        return n * bytes_per_position(kind, vocab, top_k) / GIB

    n = n_control + n_lm
    estimates = {kind: gib(kind, n) for kind in _CACHED}
    if mode != "auto":
        if mode != "on_the_fly" and estimates[mode] > max_gib:
            raise ValueError(f"reference={mode!r}: caching the original model's outputs at {n:,} positions "
                             f"(vocabulary {vocab:,}) would take {estimates[mode]:.1f} GiB > reference_max_gib="
                             f"{max_gib:g}; use reference='auto' (picks one that fits) or raise reference_max_gib")
        return ReferencePlan(mode, mode, top_k, gib(mode, n), estimates)
    for kind in _CACHED:
        if estimates[kind] <= max_gib:
            return ReferencePlan(kind, kind, top_k, estimates[kind], estimates)
    control = next((kind for kind in _CACHED if gib(kind, n_control) <= max_gib), "on_the_fly")
    return ReferencePlan(control, "on_the_fly", top_k, gib(control, n_control), estimates)
