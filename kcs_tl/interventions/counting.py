"""Counting a model's forward passes, so methods are compared at the same compute budget."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class ForwardCount:
    """Model calls and the sequences they processed since counting began."""

    calls: int = 0
    sequences: int = 0


@contextmanager
def count_forwards(model):
    """Count every top-level forward of ``model`` inside the block (hooks stay untouched)."""
    count = ForwardCount()

    def tick(module, args, kwargs):
        x = args[0] if args else kwargs.get("input")
        count.calls += 1
        count.sequences += int(x.shape[0]) if hasattr(x, "shape") and x.ndim >= 2 else 1

    handle = model.register_forward_pre_hook(tick, with_kwargs=True)
    try:
        yield count
    finally:
        handle.remove()
