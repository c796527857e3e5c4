"""Everything kcs_tl knows about `HookedTransformer`: where weights and hook points live.

Masks, searches and results speak in TransformerLens addresses
(``blocks.3.attn.W_Q``, ``blocks.3.mlp.hook_post``); this module resolves them to
modules and says how each tensor is laid out, so a later adapter (the
TransformerBridge) can answer the same questions without touching the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformer_lens.utilities import apply_softcap

try:
    from transformer_lens import HookedTransformer
except ImportError:  # TransformerLens 4.x removed it; adapters.bridge serves those users
    HookedTransformer = None

from kcs_tl import validate

WEIGHT_NAMES = ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out")
HOOK_NAMES = ("attn.hook_z", "mlp.hook_post")
GRANULARITIES = ("weight", "row", "column")

# Axes of each matrix in TransformerLens layout, read as x @ W: which axes index
# the input unit (a "row"), which the output unit (a "column"), and which axis is
# the attention head or the MLP neuron.
_LAYOUT = {
    #        module  shape names                          input axes  head  neuron
    "W_Q": ("attn", ("n_heads", "d_model", "d_head"), (1,), 0, None),
    "W_K": ("attn", ("n_heads", "d_model", "d_head"), (1,), 0, None),
    "W_V": ("attn", ("n_heads", "d_model", "d_head"), (1,), 0, None),
    "W_O": ("attn", ("n_heads", "d_head", "d_model"), (0, 1), 0, None),
    "W_in": ("mlp", ("d_model", "d_mlp"), (0,), None, 1),
    "W_out": ("mlp", ("d_mlp", "d_model"), (0,), None, 0),
}

# Config fields that decide whether a saved mask fits a model.
_FINGERPRINT_FIELDS = (
    "model_name", "n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab",
    "n_ctx", "act_fn", "normalization_type", "positional_embedding_type",
    "attn_only", "gated_mlp", "n_key_value_heads",
)


@dataclass(frozen=True)
class Site:
    """One place a mask attaches: a weight matrix or a hook point of one layer.

    ``full_shape`` is the tensor the mask covers (the weight, or the units of the
    hook: ``[d_mlp]`` neurons or ``[n_heads]`` heads); ``shape`` is the mask's own
    shape, which broadcasts against ``full_shape``.
    """

    address: str
    layer: int
    module: str  # "attn" | "mlp"
    name: str  # "W_Q" ... or "hook_z" | "hook_post"
    kind: str  # "weight" | "hook"
    granularity: str  # "weight" | "row" | "column" for weights; "head" | "neuron" for hooks
    full_shape: tuple[int, ...]
    shape: tuple[int, ...]
    head_axis: int | None
    neuron_axis: int | None

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, d: dict) -> "Site":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def is_model(model) -> bool:
    return HookedTransformer is not None and isinstance(model, HookedTransformer)


def check_model(model) -> HookedTransformer:
    """Refuse anything that is not a HookedTransformer, naming what is supported."""
    if not is_model(model):
        raise TypeError(
            f"kcs_tl needs a transformer_lens.HookedTransformer, got {type(model).__name__}. "
            "Supported: HookedTransformer (TransformerLens 3.x)."
        )
    if model.cfg.attn_only:
        raise ValueError("attention-only models have no MLP weights; mask attention weights or hooks only")
    return model


def resolve_layers(model: HookedTransformer, layers) -> list[int]:
    """Layers to mask; ``None`` means the upper half, as in Bayazit et al."""
    n = model.cfg.n_layers
    if layers is None:
        return list(range(n // 2, n))
    layers = validate.layers("layers", layers)
    bad = [x for x in layers if x >= n]
    if bad:
        raise ValueError(f"layers {bad} out of range: this model has layers 0..{n - 1}")
    return sorted(set(layers))


def _dims(model: HookedTransformer) -> dict[str, int]:
    c = model.cfg
    return {"n_heads": c.n_heads, "d_model": c.d_model, "d_head": c.d_head, "d_mlp": c.d_mlp}


def weight_site(model: HookedTransformer, layer: int, name: str, granularity: str = "weight") -> Site:
    """The site of matrix ``name`` in ``layer``; its mask shape follows ``granularity``.

    ``row`` keeps one gate per input unit (output axes collapse to 1), ``column``
    one gate per output unit (input axes collapse to 1), so masks broadcast.
    """
    if name not in _LAYOUT:
        raise ValueError(f"unknown weight {name!r}; choose from {WEIGHT_NAMES}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; choose from {GRANULARITIES}")
    module, axes, inputs, head, neuron = _LAYOUT[name]
    full = tuple(_dims(model)[a] for a in axes)
    if granularity == "weight":
        shape = full
    elif granularity == "row":
        shape = tuple(d if i in inputs else 1 for i, d in enumerate(full))
    else:
        shape = tuple(1 if i in inputs else d for i, d in enumerate(full))
    return Site(f"blocks.{layer}.{module}.{name}", layer, module, name, "weight",
                granularity, full, shape, head, neuron)


def hook_site(model: HookedTransformer, layer: int, hook: str) -> Site:
    """The site of ``attn.hook_z`` (one gate per head) or ``mlp.hook_post`` (per neuron)."""
    if hook not in HOOK_NAMES:
        raise ValueError(f"unknown hook {hook!r}; choose from {HOOK_NAMES}")
    module, name = hook.split(".")
    if hook == "attn.hook_z":
        shape, gran, head, neuron = (model.cfg.n_heads,), "head", 0, None
    else:
        shape, gran, head, neuron = (model.cfg.d_mlp,), "neuron", None, 0
    return Site(f"blocks.{layer}.{hook}", layer, module, name, "hook", gran, shape, shape, head, neuron)


def owner(model: HookedTransformer, site: Site) -> nn.Module:
    """The module holding the site's weight (as an attribute) or the hook point itself."""
    block = model.blocks[site.layer]
    sub = getattr(block, site.module)
    return getattr(sub, site.name) if site.kind == "hook" else sub


def activation_shape(model: HookedTransformer, site: Site) -> tuple[int, ...]:
    """One position's activation at a hook site: ``[n_heads, d_head]`` for ``hook_z``, ``[d_mlp]`` for ``hook_post``."""
    return (model.cfg.n_heads, model.cfg.d_head) if site.name == "hook_z" else (model.cfg.d_mlp,)


_READOUT = {"hook_z": ("W_O", "b_O"), "hook_post": ("W_out", "b_out")}


def readout(model: HookedTransformer, site: Site) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight reading a hook site's units into the residual stream, and its bias (edited in place)."""
    module = getattr(model.blocks[site.layer], site.module)
    return tuple(getattr(module, n) for n in _READOUT[site.name])


def weight_target(model: HookedTransformer, site: Site) -> tuple[nn.Module, str]:
    """The module and attribute a weight mask parametrizes (the canonical Parameter itself)."""
    return owner(model, site), site.name


def weight_view(model: HookedTransformer, site: Site) -> torch.Tensor:
    """The weight in canonical layout (in-place edits change the model)."""
    return getattr(owner(model, site), site.name)


def stored_layout(model: HookedTransformer, site: Site):
    """How a canonical-layout mask is rearranged for the stored weight: HookedTransformer stores canonically."""
    return lambda canonical: canonical


def hook_point(model: HookedTransformer, site: Site) -> nn.Module:
    """The HookPoint module of a hook site."""
    return owner(model, site)


def hook_broadcast(site: Site, gate: torch.Tensor) -> torch.Tensor:
    """Shape a per-head or per-neuron gate to multiply the hook's activation."""
    return gate[:, None] if site.name == "hook_z" else gate


def fingerprint(model: HookedTransformer) -> dict:
    """The config fields a mask must agree with to be applied to this model."""
    return {f: getattr(model.cfg, f, None) for f in _FINGERPRINT_FIELDS}


def fingerprint_mismatch(expected: dict, model: HookedTransformer) -> list[str]:
    """Human-readable differences between a saved fingerprint and a model."""
    actual = fingerprint(model)
    return [f"{k}: saved {expected[k]!r}, model {actual.get(k)!r}"
            for k in expected if expected[k] != actual.get(k)]


def residual_before(model: HookedTransformer, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    """The residual stream entering block ``layer`` (layer 0: the embeddings)."""
    return model(tokens, stop_at_layer=layer)


def run_from(model: HookedTransformer, residual: torch.Tensor, layer: int) -> torch.Tensor:
    """Blocks ``layer`` .. last on a cached residual stream; returns the final residual (pre-LN)."""
    return model(residual, start_at_layer=layer, stop_at_layer=model.cfg.n_layers)


def head(model: HookedTransformer, residual: torch.Tensor) -> torch.Tensor:
    """Final layer norm and unembedding of residuals ``[..., d_model]`` -> logits ``[..., d_vocab]``.

    Lets a caller unembed only the positions it needs (TransformerLens's own
    forward unembeds every position).
    """
    flat = residual.reshape(1, -1, residual.shape[-1])
    if model.cfg.normalization_type is not None:
        flat = model.ln_final(flat)
    logits = apply_softcap(model.unembed(flat), model.cfg.output_logits_soft_cap)
    return logits.reshape(*residual.shape[:-1], logits.shape[-1])
