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
    """Count the forward passes of ``model`` inside the block that reach its output.

    Counted at the unembedding, which every full forward runs once:
    ``run_with_hooks`` and ``run_with_cache`` call ``model.forward`` directly,
    so a hook on the model itself would miss them, and a search that caches
    the lower layers' residual once still unembeds on every step.
    """
    count = ForwardCount()

    def tick(module, args):
        count.calls += 1
        count.sequences += int(args[0].shape[0]) if args[0].ndim >= 3 else 1

    handle = model.unembed.register_forward_pre_hook(tick)
    try:
        yield count
    finally:
        handle.remove()
