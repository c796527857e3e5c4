"""What kcs_tl can mask, whichever class computes the model: sites, matrices, architectures.

Everything here reads only the model's config (``HookedTransformer`` and
``TransformerBridge`` share its fields) and speaks TransformerLens's canonical
layout and addresses (``blocks.3.attn.W_Q``, ``blocks.3.mlp.hook_post``), so
both adapters, masks and saved subnetworks agree on every site.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import torch

from kcs_tl import validate
from kcs_tl.validate import InputValueError

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
    """What kcs_tl can mask in one model, whichever class computes it.

    ``matrices`` are the maskable weight matrices by user name (biases,
    embeddings, norms and the unembedding are never masked); ``hooks`` the
    hook points that take one gate per head or neuron; ``dims`` the sizes the
    matrices' axes name.
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
            raise InputValueError(f"{name}: {self.family} model has no {missing} "
                                  f"(features: {', '.join(self.features)}); "
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


def check_config(cfg) -> None:
    """Refuse configurations kcs_tl cannot mask, whichever class carries them."""
    if cfg.attn_only:
        raise InputValueError("attention-only models have no MLP weights; mask attention weights or hooks only")
    if cfg.num_experts:
        raise InputValueError(f"mixture-of-experts models (num_experts={cfg.num_experts}) are not supported: kcs_tl "
                              "masks dense MLPs only (GPT-2, GPT-NeoX/Pythia, Llama/Mistral/Qwen and Gemma-2 styles)")
    if getattr(cfg, "load_in_4bit", False):
        raise InputValueError("4-bit quantised models are not supported: their weights are packed, so a mask cannot "
                              "multiply them; load the model in float32, float16 or bfloat16")


def resolve_layers(model, layers) -> list[int]:
    """Layers to mask; ``None`` means the upper half, as in Bayazit et al."""
    n = model.cfg.n_layers
    if layers is None:
        return list(range(n // 2, n))
    layers = validate.layers("layers", layers)
    bad = [x for x in layers if x >= n]
    if bad:
        raise InputValueError(f"layers {bad} out of range: this model has layers 0..{n - 1}")
    return sorted(set(layers))


def _matrix(arch: Architecture, name: str) -> Matrix:
    """A matrix by user name (``W_K``) or stored name (``_W_K``, as saved sites name it)."""
    for m in arch.matrices.values():
        if name in (m.name, m.stored):
            return m
    raise InputValueError(f"unknown weight {name!r}; this {arch.family} model has {arch.weights}")


def site_of(arch: Architecture, layer: int, name: str, granularity: str = "weight") -> Site:
    """The site of matrix ``name`` in ``layer`` of ``arch``; its mask shape follows ``granularity``.

    ``row`` keeps one gate per input unit (output axes collapse to 1), ``column``
    one gate per output unit (input axes collapse to 1), so masks broadcast. The
    site is named by the stored parameter (``blocks.3.attn._W_K`` under
    grouped-query attention), which is what a mask multiplies.
    """
    if granularity not in GRANULARITIES:
        raise InputValueError(f"unknown granularity {granularity!r}; choose from {GRANULARITIES}")
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


def unit(site: Site) -> str:
    """What one index of the site's unit axis is: ``head``, ``kv_head`` or ``neuron``."""
    if site.neuron_axis is not None:
        return "neuron"
    return "kv_head" if site.kind == "weight" and site.name in {m.stored for m in _GROUPED.values()} else "head"


def hook_site(model, layer: int, hook: str) -> Site:
    """The site of ``attn.hook_z`` (one gate per head) or ``mlp.hook_post`` (per neuron)."""
    if hook not in HOOK_NAMES:
        raise InputValueError(f"unknown hook {hook!r}; choose from {HOOK_NAMES}")
    module, name = hook.split(".")
    if hook == "attn.hook_z":
        shape, gran, head, neuron = (model.cfg.n_heads,), "head", 0, None
    else:
        shape, gran, head, neuron = (model.cfg.d_mlp,), "neuron", None, 0
    return Site(f"blocks.{layer}.{hook}", layer, module, name, "hook", gran, shape, shape, head, neuron)


def activation_shape(model, site: Site) -> tuple[int, ...]:
    """One position's activation at a hook site: ``[n_heads, d_head]`` for ``hook_z``, ``[d_mlp]`` for ``hook_post``."""
    return (model.cfg.n_heads, model.cfg.d_head) if site.name == "hook_z" else (model.cfg.d_mlp,)


def hook_broadcast(site: Site, gate: torch.Tensor) -> torch.Tensor:
    """Shape a per-head or per-neuron gate to multiply the hook's activation."""
    return gate[:, None] if site.name == "hook_z" else gate


def fingerprint(model) -> dict:
    """The config fields a mask must agree with to be applied to this model."""
    return {f: getattr(model.cfg, f, None) for f in _FINGERPRINT_FIELDS}


def fingerprint_mismatch(expected: dict, model) -> list[str]:
    """Human-readable differences between a saved fingerprint and a model."""
    actual = fingerprint(model)
    return [f"{k}: saved {expected[k]!r}, model {actual.get(k)!r}"
            for k in expected if expected[k] != actual.get(k)]


def activation_bytes(model, n_layers: int, seq_len: int) -> int:
    """Rough fp32 bytes one sequence keeps for the backward pass through ``n_layers`` blocks and the unembedding.

    Per token and block: about 12 residual-sized and 4 MLP-sized tensors plus 4
    attention-score rows per head; per token, 4 vocabulary-sized tensors (logits,
    log-probs and their gradients). An estimate for choosing batch chunks, not a bound.
    """
    c = model.cfg
    per_token = n_layers * (12 * c.d_model + 4 * c.d_mlp + 4 * c.n_heads * seq_len) + 4 * c.d_vocab
    return 4 * seq_len * per_token
