"""Activation patching of single MLP neurons, many neurons per forward pass.

TransformerLens's ``patching`` module has no neuron patcher, and one forward pass
per neuron is slow (``d_mlp`` passes per layer). Here the corrupted residual
stream entering layer ``l`` is computed once; the prompt batch is repeated once
per neuron of a chunk along the batch axis, and in copy ``c`` only neuron
``idx[c]`` of ``blocks.l.mlp.hook_post`` takes its clean value (at every
position). Only layers ``l`` .. last run, and only the answer positions are
unembedded. Chunks are sized so the activations of one forward stay within
``max_memory_mb``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from kcs_tl import validate
from kcs_tl.adapters import residual_before, run_from, to_logits
from kcs_tl.analysis.answer_metrics import Metric, answer_logits

_NAME = "blocks.{}.mlp.hook_post"


def rows_per_forward(model, n_pos: int, max_memory_mb: float) -> int:
    """How many prompt rows one forward may hold: an estimate of the float activations a row keeps
    alive at once in one block (residual copies, attention scores, the MLP's hidden layer)."""
    c = model.cfg
    per_row = n_pos * (16 * c.d_model + 4 * c.d_mlp + 3 * c.n_heads * n_pos) * 4
    return max(1, int(max_memory_mb * 2**20 // per_row))


@torch.no_grad()
def patch_neurons(model, corrupted: Int[Tensor, "batch pos"], clean_post: dict[int, Float[Tensor, "batch pos d_mlp"]],
                  metric: Metric, answer_pos: Int[Tensor, "batch"], layers: Sequence[int],
                  corrupt_hooks: list | None = None, max_memory_mb: float = 256.0) -> Float[Tensor, "layer d_mlp"]:
    """The metric with each neuron of ``layers`` patched to its clean value, one row per layer.

    ``clean_post[l]`` is the clean run's ``blocks.l.mlp.hook_post``; ``corrupt_hooks``
    are forward hooks that make the corrupted run (e.g. the embedding noise).
    """
    max_memory_mb = validate.number("max_memory_mb", max_memory_mb, 0, low_open=True)
    batch, n_pos = corrupted.shape
    chunk = max(1, rows_per_forward(model, n_pos, max_memory_mb) // batch)
    d_mlp = model.cfg.d_mlp
    out = torch.empty(len(layers), d_mlp)
    rows = torch.arange(batch, device=corrupted.device)
    for i, layer in enumerate(layers):
        with model.hooks(fwd_hooks=corrupt_hooks or []):
            resid = residual_before(model, corrupted, layer)
        clean = clean_post[layer]
        for lo in range(0, d_mlp, chunk):
            idx = torch.arange(lo, min(lo + chunk, d_mlp), device=corrupted.device)
            n = len(idx)

            def patch(post, hook, idx=idx, n=n):
                post = post.view(n, batch, n_pos, d_mlp)
                post[torch.arange(n, device=post.device), :, :, idx] = clean[:, :, idx].permute(2, 0, 1)
                return post.view(n * batch, n_pos, d_mlp)

            with model.hooks(fwd_hooks=[(_NAME.format(layer), patch)]):
                final = run_from(model, resid.repeat(n, 1, 1), layer).view(n, batch, n_pos, -1)
            logits = to_logits(model, final[:, rows, answer_pos.to(final.device)])
            out[i, lo: lo + n] = metric(logits).float().cpu()
    return out


@torch.no_grad()
def patch_neurons_looped(model, corrupted: Int[Tensor, "batch pos"],
                         clean_post: dict[int, Float[Tensor, "batch pos d_mlp"]], metric: Metric,
                         answer_pos: Int[Tensor, "batch"], layers: Sequence[int],
                         corrupt_hooks: list | None = None) -> Float[Tensor, "layer d_mlp"]:
    """The same numbers, one full forward per neuron with a plain hook: what ``patch_neurons``
    is tested and benchmarked against."""
    out = torch.empty(len(layers), model.cfg.d_mlp)
    for i, layer in enumerate(layers):
        for j in range(model.cfg.d_mlp):
            def patch(post, hook, j=j):
                post[..., j] = clean_post[layer][..., j]
                return post

            logits = model.run_with_hooks(corrupted, fwd_hooks=[*(corrupt_hooks or []),
                                                                 (_NAME.format(layer), patch)])
            out[i, j] = metric(answer_logits(logits, answer_pos)).float().cpu()
    return out
