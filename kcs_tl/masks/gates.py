"""What a mask multiplies the model with: one rule for training masks (``MaskedModel``) and results (``Subnetwork``).

A mask value m = 1 puts a unit in the subnetwork. ``mode="remove"`` computes
with 1 - m (the model without the subnetwork); ``mode="keep"`` with m (only the
subnetwork remains).
"""

from __future__ import annotations

from torch import Tensor

from kcs_tl.validate import InputValueError

MODES = ("remove", "keep")


def keep_gate(m: Tensor, mode: str) -> Tensor:
    """The multiplier the model computes with, given subnetwork membership ``m``."""
    return 1 - m if mode == "remove" else m


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise InputValueError(f"unknown mode {mode!r}; choose from {MODES}")
    return mode
