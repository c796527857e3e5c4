"""Everything kcs_tl knows about `HookedTransformer`: where weights and hook points live.

Masks, searches and results speak in TransformerLens addresses
(``blocks.3.attn.W_Q``, ``blocks.3.mlp.hook_post``); this module resolves them to
modules and says how each tensor is laid out, so a later adapter (the
TransformerBridge) can answer the same questions without touching the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import pandas as pd
from torch import nn
from torch.nn.utils import parametrize
from transformer_lens.utilities import apply_softcap

try:
    from transformer_lens import HookedTransformer
except ImportError:  # TransformerLens 4.x removed it; adapters.bridge serves those users
    HookedTransformer = None

from kcs_tl import validate

WEIGHT_NAMES = ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out", "W_gate")
"""Every weight matrix name kcs_tl can mask; ``architecture(model).weights`` says which a model has."""
HOOK_NAMES = ("attn.hook_z", "mlp.hook_post")
GRANULARITIES = ("weight", "row", "column")

# Config fields that decide whether a saved mask fits a model.
_FINGERPRINT_FIELDS = (
    "model_name", "n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab",
    "n_ctx", "act_fn", "normalization_type", "positional_embedding_type",
    "attn_only", "gated_mlp", "n_key_value_heads",
)


@dataclass(frozen=True)
class Matrix:
    """One maskable weight matrix of an architecture, in TransformerLens layout (read as ``x @ W``).

    ``name`` is what a user asks for (``"W_K"``); ``stored`` is the attribute
    that holds the ``nn.Parameter`` and is masked (``"_W_K"`` under grouped-query
    attention, where ``W_K`` is a computed property); ``axes`` name the stored
    shape; ``inputs`` are the axes indexing the input unit (a "row");
    ``unit_axis`` indexes the matrix's unit and ``unit`` says what it is:
    ``"head"``, ``"kv_head"`` (a key/value head shared by a group of query heads)
    or ``"neuron"``.
    """

    name: str
    stored: str
    module: str  # "attn" | "mlp"
    axes: tuple[str, ...]
    inputs: tuple[int, ...]
    unit: str
    unit_axis: int


_HEADS = ("n_heads", "d_model", "d_head")
_KV_HEADS = ("n_key_value_heads", "d_model", "d_head")
_MATRICES = {
    "W_Q": Matrix("W_Q", "W_Q", "attn", _HEADS, (1,), "head", 0),
    "W_K": Matrix("W_K", "W_K", "attn", _HEADS, (1,), "head", 0),
    "W_V": Matrix("W_V", "W_V", "attn", _HEADS, (1,), "head", 0),
    "W_O": Matrix("W_O", "W_O", "attn", ("n_heads", "d_head", "d_model"), (0, 1), "head", 0),
    "W_in": Matrix("W_in", "W_in", "mlp", ("d_model", "d_mlp"), (0,), "neuron", 1),
    "W_out": Matrix("W_out", "W_out", "mlp", ("d_mlp", "d_model"), (0,), "neuron", 0),
    "W_gate": Matrix("W_gate", "W_gate", "mlp", ("d_model", "d_mlp"), (0,), "neuron", 1),
}
_GROUPED = {n: Matrix(n, f"_{n}", "attn", _KV_HEADS, (1,), "kv_head", 0) for n in ("W_K", "W_V")}


@dataclass(frozen=True)
class Architecture:
    """What kcs_tl can mask in one model: the adapter's whole answer about an architecture.

    ``matrices`` are the maskable weight matrices by user name (biases,
    embeddings, norms and the unembedding are never masked); ``hooks`` the
    hook points that take one gate per head or neuron; ``dims`` the sizes the
    matrices' axes name. A TransformerBridge adapter answers the same questions.
    """

    family: str
    matrices: dict[str, Matrix]
    hooks: tuple[str, ...]
    dims: dict[str, int]
    features: tuple[str, ...]

    @property
    def weights(self) -> tuple[str, ...]:
        """The weight names this model has, in ``WEIGHT_NAMES`` order: ``weights=None`` masks all of them."""
        return tuple(self.matrices)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.dims[a] for a in self.matrices[name].axes)

    def check_weights(self, name: str, weights) -> tuple[str, ...]:
        """``weights`` (``None``: all of this model's matrices) checked against this architecture."""
        if weights is None:
            return self.weights
        weights = validate.names(name, weights, WEIGHT_NAMES)
        missing = [w for w in weights if w not in self.matrices]
        if missing:
            raise ValueError(f"{name}: {self.family} model has no {missing} (features: {', '.join(self.features)}); "
                             f"its maskable matrices are {self.weights}")
        return weights

    def table(self) -> pd.DataFrame:
        """One row per maskable matrix: stored name, shape, unit, weights per layer."""
        return pd.DataFrame([{"weight": m.name, "stored as": f"{m.module}.{m.stored}", "shape": self.shape(m.name),
                              "axes": m.axes, "unit": m.unit, "per layer": math.prod(self.shape(m.name))}
                             for m in self.matrices.values()])

    def __repr__(self) -> str:
        return f"Architecture({self.family}: {', '.join(self.features)}; weights {self.weights})"

    def _repr_html_(self) -> str:
        return f"<p><b>{self!r}</b></p>" + self.table().to_html(index=False)


def _family(cfg) -> str:
    if cfg.use_normalization_before_and_after:
        return "Gemma-2 style"
    if cfg.n_key_value_heads is not None or cfg.gated_mlp:
        return "Llama/Mistral/Qwen style"
    if cfg.parallel_attn_mlp:
        return "GPT-NeoX/Pythia style"
    return "GPT-2 style"


def _features(cfg) -> tuple[str, ...]:
    out = [f"norm {cfg.normalization_type}", f"{cfg.positional_embedding_type} positions"]
    if cfg.n_key_value_heads is not None:
        out.append(f"grouped-query attention ({cfg.n_heads} query heads share {cfg.n_key_value_heads} key/value)")
    out.append("gated MLP" if cfg.gated_mlp else "MLP")
    if cfg.parallel_attn_mlp:
        out.append("parallel attention and MLP")
    if cfg.use_normalization_before_and_after:
        out.append("norms before and after each sublayer")
    return tuple(out)


def architecture(model) -> Architecture:
    """The maskable matrices, hook points and sizes of ``model`` (refusing what kcs_tl cannot mask)."""
    return architecture_of(check_model(model).cfg)


def architecture_of(cfg) -> Architecture:
    """The architecture a TransformerLens config describes (the bridge's config has the same fields)."""
    grouped = cfg.n_key_value_heads is not None
    matrices = {n: (_GROUPED[n] if grouped and n in _GROUPED else _MATRICES[n])
                for n in WEIGHT_NAMES if n != "W_gate" or cfg.gated_mlp}
    dims = {"n_heads": cfg.n_heads, "n_key_value_heads": cfg.n_key_value_heads or cfg.n_heads,
            "d_model": cfg.d_model, "d_head": cfg.d_head, "d_mlp": cfg.d_mlp}
    return Architecture(_family(cfg), matrices, HOOK_NAMES, dims, _features(cfg))


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
    """Refuse anything that is not a HookedTransformer kcs_tl can mask, naming what is supported."""
    if not is_model(model):
        raise TypeError(
            f"kcs_tl needs a transformer_lens.HookedTransformer, got {type(model).__name__}. "
            "Supported: HookedTransformer (TransformerLens 3.x)."
        )
    check_config(model.cfg)
    return model


def check_config(cfg) -> None:
    """Refuse configurations kcs_tl cannot mask, whichever class carries them."""
    if cfg.attn_only:
        raise ValueError("attention-only models have no MLP weights; mask attention weights or hooks only")
    if cfg.num_experts:
        raise ValueError(f"mixture-of-experts models (num_experts={cfg.num_experts}) are not supported: kcs_tl "
                         "masks dense MLPs only (GPT-2, GPT-NeoX/Pythia, Llama/Mistral/Qwen and Gemma-2 styles)")
    if getattr(cfg, "load_in_4bit", False):
        raise ValueError("4-bit quantised models are not supported: their weights are packed, so a mask cannot "
                         "multiply them; load the model in float32, float16 or bfloat16")


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


def _matrix(arch: Architecture, name: str) -> Matrix:
    """A matrix by user name (``W_K``) or stored name (``_W_K``, as saved sites name it)."""
    for m in arch.matrices.values():
        if name in (m.name, m.stored):
            return m
    raise ValueError(f"unknown weight {name!r}; this {arch.family} model has {arch.weights}")


def weight_site(model: HookedTransformer, layer: int, name: str, granularity: str = "weight") -> Site:
    """The site of matrix ``name`` in ``layer``; its mask shape follows ``granularity``.

    ``row`` keeps one gate per input unit (output axes collapse to 1), ``column``
    one gate per output unit (input axes collapse to 1), so masks broadcast. The
    site is named by the stored parameter (``blocks.3.attn._W_K`` under
    grouped-query attention), which is what a mask multiplies.
    """
    return site_of(architecture(model), layer, name, granularity)


def site_of(arch: Architecture, layer: int, name: str, granularity: str = "weight") -> Site:
    """``weight_site`` given the model's architecture (shared with the bridge adapter)."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; choose from {GRANULARITIES}")
    m = _matrix(arch, name)
    full = arch.shape(m.name)
    if granularity == "weight":
        shape = full
    elif granularity == "row":
        shape = tuple(d if i in m.inputs else 1 for i, d in enumerate(full))
    else:
        shape = tuple(1 if i in m.inputs else d for i, d in enumerate(full))
    head, neuron = (None, m.unit_axis) if m.unit == "neuron" else (m.unit_axis, None)
    return Site(f"blocks.{layer}.{m.module}.{m.stored}", layer, m.module, m.stored, "weight",
                granularity, full, shape, head, neuron)


def check_site(model: HookedTransformer, site: Site) -> Site:
    """Make sure the site's tensor exists in ``model`` as a Parameter of the expected shape.

    Cheap; run before any expensive step so a layout the adapter does not know
    fails at once, not after minutes of preparation.
    """
    target = owner(model, site)
    if site.kind == "weight" and not parametrize.is_parametrized(target, site.name):  # a second mask: attach says so
        w = target._parameters.get(site.name)
        if not isinstance(w, nn.Parameter) or tuple(w.shape) != site.full_shape:
            found = "nothing" if w is None else f"{type(w).__name__} {tuple(w.shape)}"
            raise ValueError(f"{site.address}: expected a Parameter of shape {site.full_shape} in "
                             f"{type(target).__name__}, found {found}; kcs_tl does not know this layout")
    return site


def unit(site: Site) -> str:
    """What one index of the site's unit axis is: ``head``, ``kv_head`` or ``neuron``."""
    if site.neuron_axis is not None:
        return "neuron"
    return "kv_head" if site.kind == "weight" and site.name in {m.stored for m in _GROUPED.values()} else "head"


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


def activation_bytes(model: HookedTransformer, n_layers: int, seq_len: int) -> int:
    """Rough fp32 bytes one sequence keeps for the backward pass through ``n_layers`` blocks and the unembedding.

    Per token and block: about 12 residual-sized and 4 MLP-sized tensors plus 4
    attention-score rows per head; per token, 4 vocabulary-sized tensors (logits,
    log-probs and their gradients). An estimate for choosing batch chunks, not a bound.
    """
    c = model.cfg
    per_token = n_layers * (12 * c.d_model + 4 * c.d_mlp + 4 * c.n_heads * seq_len) + 4 * c.d_vocab
    return 4 * seq_len * per_token


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
