"""Activation patching on knowledge prompts: which heads, layers and neurons restore a fact.

Clean activations are patched into the corrupted run (subject swap or subject noise,
``kcs_tl.analysis.prompts``) one component at a time, and the answer metric is read
(``kcs_tl.analysis.answer_metrics``). Heads and layer outputs go through
``transformer_lens.patching.generic_activation_patch``; single neurons through the
batched patcher of ``kcs_tl.analysis.neuron_patching`` (TransformerLens has none).
``effect`` is the fraction of the clean-vs-corrupted gap a patch closes:
``(patched - corrupted) / (clean - corrupted)``, 1 = fully restored.
"""

from __future__ import annotations

import html
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import pandas as pd
import torch
import transformer_lens.patching as tl_patching
from jaxtyping import Float
from torch import Tensor
from transformer_lens.utilities import get_act_name

from kcs_tl import validate
from kcs_tl.adapters import check_model, resolve_layers
from kcs_tl.analysis.answer_metrics import METRICS, answer_logits, answer_metric
from kcs_tl.analysis.components import component_key
from kcs_tl.analysis.neuron_patching import patch_neurons
from kcs_tl.analysis.prompts import CORRUPTIONS, KnowledgePrompts
from kcs_tl.validate import InputTypeError

GRANULARITIES = ("head", "neuron", "attn_layer", "mlp_layer", "attn_pos", "mlp_pos")
"""``head``: each head's output (``hook_z``) at all positions; ``neuron``: each MLP neuron
(``hook_post``) at all positions; ``attn_layer`` / ``mlp_layer``: a layer's attention / MLP
output at all positions; ``attn_pos`` / ``mlp_pos``: the same per position (positions are
absolute: prompts of different lengths are right-padded)."""

# granularity -> (TransformerLens activation name, component kind, index axis)
_SITES = {"head": ("z", "head", "head"), "neuron": ("post", "neuron", "neuron"),
          "attn_layer": ("attn_out", "attn_layer", None), "mlp_layer": ("mlp_out", "mlp_layer", None),
          "attn_pos": ("attn_out", "attn_pos", "pos"), "mlp_pos": ("mlp_out", "mlp_pos", "pos")}


@dataclass
class PatchingResult:
    """One row per patched component: ``component``, ``kind``, ``layer``, ``index``, ``value``, ``effect``.

    ``value`` is the metric of the patched run (for attribution: its first-order
    estimate); ``clean`` and ``corrupted`` are the metric of the unpatched runs.
    """

    table: pd.DataFrame
    granularity: str
    metric: str
    corruption: str
    method: str  # "exact" | "attribution"
    clean: float
    corrupted: float
    seconds: float
    n_prompts: int

    def matrix(self, column: str = "effect") -> pd.DataFrame:
        """``layer x index`` table of ``column`` (for heat maps)."""
        return self.table.pivot(index="layer", columns="index", values=column)

    def top(self, n: int = 10) -> pd.DataFrame:
        """The ``n`` components with the largest absolute effect."""
        return self.table.loc[self.table.effect.abs().nlargest(n).index]

    def __repr__(self) -> str:
        return (f"PatchingResult({self.method} {self.granularity} patching, {len(self.table)} components, "
                f"metric {self.metric} clean {self.clean:.4g} corrupted {self.corrupted:.4g}, "
                f"{self.corruption} corruption, {self.n_prompts} prompts, {self.seconds:.2f} s)")

    def _repr_html_(self) -> str:
        return (f"<p><code>{html.escape(repr(self))}</code></p><p>largest effects:</p>"
                + self.top().to_html(index=False, float_format="{:.4f}".format))


def _table(values: Float[Tensor, "layer index"], layers: list[int], granularity: str) -> pd.DataFrame:
    _, kind, axis = _SITES[granularity]
    rows = []
    for i, layer in enumerate(layers):
        for j, v in enumerate(values[i].tolist()):
            key = (component_key(kind, layer, j) if kind in ("head", "neuron")
                   else f"L{layer}{kind}" + (f"@{j}" if axis else ""))
            rows.append({"component": key, "kind": kind, "layer": layer, "index": j, "value": v})
    return pd.DataFrame(rows)


@contextmanager
def _quiet_tl():
    """TransformerLens's patching loop draws a progress bar per call; keep ours quiet."""
    bar = tl_patching.tqdm
    tl_patching.tqdm = partial(bar, disable=True)
    try:
        yield
    finally:
        tl_patching.tqdm = bar


def _setup(model, prompts, metric, corruption, layers):
    check_model(model)
    if not isinstance(prompts, KnowledgePrompts):
        raise InputTypeError(f"prompts must be KnowledgePrompts (kcs_tl.analysis.knowledge_prompts), "
                             f"got {validate.given(prompts)}")
    validate.choice("metric", metric, METRICS)
    validate.choice("corruption", corruption, CORRUPTIONS)
    layers = list(range(model.cfg.n_layers)) if layers is None else resolve_layers(model, layers)
    prompts = prompts.to(model.cfg.device)
    return prompts, layers


def _names(granularity: str, layers: list[int]) -> list[str]:
    return [get_act_name(_SITES[granularity][0], layer) for layer in layers]


def _baselines(model, prompts, metric, corruption, names):
    """The clean cache (of ``names``), the metric function, and the clean / corrupted metric values."""
    with torch.no_grad():
        clean_logits, cache = model.run_with_cache(prompts.clean, names_filter=lambda n: n in names)
        fn = answer_metric(metric, prompts.gold, prompts.counter, answer_logits(clean_logits, prompts.answer_pos))
        tokens, hooks = prompts.corrupted(corruption)
        corrupted_logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
    return (cache, fn, float(fn(answer_logits(clean_logits, prompts.answer_pos))),
            float(fn(answer_logits(corrupted_logits, prompts.answer_pos))))


def _result(values, layers, granularity, metric, corruption, method, clean, corrupted, start, n):
    table = _table(values.float().cpu(), layers, granularity)
    gap = clean - corrupted
    table["effect"] = (table["value"] - corrupted) / gap if gap != 0 else float("nan")
    return PatchingResult(table, granularity, metric, corruption, method, clean, corrupted,
                          time.perf_counter() - start, n)


def patch(model, prompts: KnowledgePrompts, granularity: str = "head", metric: str = "logprob",
          corruption: str = "swap", layers=None, max_memory_mb: float = 256.0) -> PatchingResult:
    """Exact activation patching of every component of ``granularity`` in ``layers`` (default: all).

    Heads and layer outputs: one forward per component (TransformerLens's patcher);
    neurons: many per forward, within ``max_memory_mb`` (``patch_neurons``).
    """
    validate.choice("granularity", granularity, GRANULARITIES)
    max_memory_mb = validate.number("max_memory_mb", max_memory_mb, 0, low_open=True)
    prompts, layers = _setup(model, prompts, metric, corruption, layers)
    start = time.perf_counter()
    names = _names(granularity, layers)
    cache, fn, clean, corrupted = _baselines(model, prompts, metric, corruption, names)
    tokens, hooks = prompts.corrupted(corruption)
    if granularity == "neuron":
        values = patch_neurons(model, tokens, {l: cache[n] for l, n in zip(layers, names)}, fn,
                               prompts.answer_pos, layers, hooks, max_memory_mb)
    else:
        act, _, axis = _SITES[granularity]
        size = {"head": model.cfg.n_heads, "pos": tokens.shape[1], None: 1}[axis]
        index = pd.DataFrame([(l, j) for l in layers for j in range(size)], columns=["layer", "index"])
        setter = {"head": tl_patching.layer_head_vector_patch_setter, "pos": tl_patching.layer_pos_patch_setter,
                  None: _all_positions}[axis]
        with torch.no_grad(), model.hooks(fwd_hooks=hooks), _quiet_tl():
            flat = tl_patching.generic_activation_patch(
                model, tokens, cache, lambda logits: fn(answer_logits(logits, prompts.answer_pos)), setter, act,
                index_df=index if axis else index[["layer"]])
        values = flat.reshape(len(layers), size)
    return _result(values, layers, granularity, metric, corruption, "exact", clean, corrupted, start, len(prompts))


def _all_positions(corrupted_activation, index, clean_activation):
    """Patch setter for a whole layer output (TransformerLens has per-position ones only)."""
    corrupted_activation[...] = clean_activation
    return corrupted_activation


def attribute(model, prompts: KnowledgePrompts, granularity: str = "head", metric: str = "logprob",
              corruption: str = "swap", layers=None) -> PatchingResult:
    """Attribution patching: the first-order estimate ``grad . (clean - corrupted)`` of every patch.

    One corrupted forward and backward for all components (Nanda, "Attribution
    patching"); ``value`` is the corrupted metric plus that estimate.
    """
    validate.choice("granularity", granularity, GRANULARITIES)
    prompts, layers = _setup(model, prompts, metric, corruption, layers)
    start = time.perf_counter()
    names = _names(granularity, layers)
    cache, fn, clean, corrupted = _baselines(model, prompts, metric, corruption, names)
    tokens, hooks = prompts.corrupted(corruption)
    acts = {}

    def keep(name):  # keyed by the name asked for: a TransformerBridge's hook.name is its own (attn.o.hook_in)
        def hook_fn(act, hook):
            acts[name] = act
            return act

        return hook_fn

    def differentiable(embed, hook):  # a frozen model still gives gradients for its activations
        return embed if embed.requires_grad else embed.detach().requires_grad_()

    with torch.enable_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=[*hooks, ("hook_embed", differentiable),
                                                         *[(n, keep(n)) for n in names]])
        grads = torch.autograd.grad(fn(answer_logits(logits, prompts.answer_pos)), [acts[n] for n in names])
    axis = _SITES[granularity][2]
    values = []
    for name, grad in zip(names, grads):
        delta = (grad * (cache[name] - acts[name].detach())).float()
        if axis == "head":
            values.append(delta.sum((0, 1, 3)))  # [batch, pos, head, d_head] -> head
        elif axis == "neuron":
            values.append(delta.sum((0, 1)))
        elif axis == "pos":
            values.append(delta.sum((0, 2)))
        else:
            values.append(delta.sum().reshape(1))
    return _result(corrupted + torch.stack(values).detach(), layers, granularity, metric, corruption,
                   "attribution", clean, corrupted, start, len(prompts))
