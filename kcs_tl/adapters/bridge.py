"""Everything kcs_tl knows about TransformerLens's `TransformerBridge` (TransformerLens 3.9 and 4.x).

The bridge wraps a Hugging Face model. Its ``W_Q``/``W_in``/... are read-only
views recomputed on every access, so a mask there would do nothing; the
modules that really compute are ``blocks[i].attn.{q,k,v,o}.original_component``
and ``blocks[i].mlp.{gate,in,out}.original_component`` (GPT-2's fused ``c_attn``
is split into q/k/v copies at boot). Their ``weight`` is stored either as
``nn.Linear`` (``[out, in]``) or as Hugging Face's ``Conv1D`` (``[in, out]``),
and heads are flattened into one axis.

This module answers the same questions as ``adapters.hooked`` for the
class-neutral sites of ``adapters.sites`` (canonical layout,
``W_Q [n_heads, d_model, d_head]``): a weight mask is converted to the stored
layout when it multiplies, so a subnetwork found on one class applies to the
same weights loaded through the other.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.utilities import apply_softcap

from kcs_tl.adapters.sites import Site, architecture_of, check_config, site_of
from kcs_tl.validate import InputTypeError, InputValueError

# Canonical matrix -> the bridge component (under ``blocks[i]``) whose original_component computes it.
_COMPONENT = {"W_Q": "attn.q", "W_K": "attn.k", "W_V": "attn.v", "W_O": "attn.o",
              "W_in": "mlp.in", "W_out": "mlp.out", "W_gate": "mlp.gate"}


def is_model(model) -> bool:
    return isinstance(model, TransformerBridge)


def check_model(model) -> TransformerBridge:
    """Refuse a bridge kcs_tl cannot mask (see ``sites.check_config``; q/k/v not in their own modules)."""
    if not is_model(model):
        raise InputTypeError(f"expected a transformer_lens TransformerBridge, got {type(model).__name__}")
    check_config(model.cfg)
    block = model.blocks[0]
    for name in ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out"):
        if _component(block, name) is None:
            kind = type(block._modules.get("_original_component", block)).__name__
            raise InputValueError(f"this TransformerBridge ({kind} blocks) has no {_COMPONENT[name]}.original_component "
                                  f"computing {name}; kcs_tl masks bridges whose attention has separate q/k/v/o "
                                  "modules and whose MLP has in/out modules")
    return model


def _component(block: nn.Module, name: str) -> nn.Module | None:
    """The module computing canonical matrix ``name`` in one bridge block, or None."""
    obj = block
    for part in _COMPONENT[name].split("."):
        obj = getattr(obj, part, None) if obj is not None else None
    original = getattr(obj, "original_component", None)
    if original is None:
        return None
    # Look without reading .weight: while masked, reading it runs the parametrization.
    return original if "weight" in original._parameters or parametrize.is_parametrized(original, "weight") else None


def check_site(model: TransformerBridge, site: Site) -> Site:
    """Make sure a weight site's computing module exists and holds a weight of the site's size (cheap)."""
    if site.kind == "weight":
        _stored(model, site)
    return site


# -- weights: canonical layout <-> stored layout --------------------------------


def _orientation(module: nn.Module) -> str:
    """``"out_in"`` for ``nn.Linear``, ``"in_out"`` for Hugging Face's ``Conv1D``."""
    if isinstance(module, nn.Linear):
        return "out_in"
    if type(module).__name__ == "Conv1D":
        return "in_out"
    raise InputValueError(f"kcs_tl does not know how {type(module).__name__} stores its weight; "
                          "expected nn.Linear or transformers' Conv1D")


def _heads_out(site: Site) -> bool:
    """``W_O`` ([n_heads, d_head, d_model]) has its heads on the input side; W_Q/K/V on the output side."""
    return site.name.lstrip("_") == "W_O"


def _stored(model: TransformerBridge, site: Site) -> nn.Module:
    """The module whose ``weight`` computes the site's matrix, checked to hold as many weights as the site."""
    module = _component(model.blocks[site.layer], site.name.lstrip("_"))
    if module is None:
        raise InputValueError(f"{site.address}: this TransformerBridge has no module computing {site.name}")
    weight = (module.parametrizations.weight.original if parametrize.is_parametrized(module, "weight")
              else module.weight)
    full = site.full_shape
    n_in = full[1] if len(full) == 3 and not _heads_out(site) else math.prod(full[:-1])
    flat = (n_in, math.prod(full) // n_in)  # as read by x @ W
    if tuple(weight.shape) != (flat[::-1] if _orientation(module) == "out_in" else flat):
        raise InputValueError(f"{site.address}: {type(module).__name__} stores a weight of shape "
                              f"{tuple(weight.shape)}, which is not {site.name} {site.full_shape} flattened; "
                              "kcs_tl does not know this layout")
    return module


def weight_target(model: TransformerBridge, site: Site) -> tuple[nn.Module, str]:
    """The module and attribute a weight mask parametrizes: the stored ``weight`` that really computes."""
    return _stored(model, site), "weight"


def weight_view(model: TransformerBridge, site: Site) -> Tensor:
    """The stored weight seen in canonical layout, as a view: in-place edits change the model."""
    module = _stored(model, site)
    flat = module.weight.t() if _orientation(module) == "out_in" else module.weight
    full = site.full_shape
    if len(full) == 2:
        return flat
    if _heads_out(site):  # [n_heads, d_head, d_model]
        return flat.view(full)
    return flat.view(full[1], full[0], full[2]).permute(1, 0, 2)  # [heads, d_model, d_head]


def stored_layout(model: TransformerBridge, site: Site) -> Callable[[Tensor], Tensor]:
    """How a tensor of the site's canonical shape (or broadcasting to it) is rearranged as the stored weight."""
    transpose = _orientation(_stored(model, site)) == "out_in"
    heads_out = _heads_out(site)

    def to_stored(canonical: Tensor) -> Tensor:
        c = canonical.expand(site.full_shape)
        if c.dim() == 3:
            c = c.reshape(-1, c.shape[-1]) if heads_out else c.permute(1, 0, 2).flatten(1)
        return c.t() if transpose else c

    return to_stored


# -- hook points ------------------------------------------------------------------


def hook_point(model: TransformerBridge, site: Site) -> nn.Module:
    """The bridge's hook point behind a 3.x hook name (``attn.hook_z`` is ``attn.o.hook_in``)."""
    try:
        return model.hook_dict[site.address]
    except KeyError:
        raise InputValueError(f"this TransformerBridge has no hook point {site.address}") from None


def readout(model: TransformerBridge, site: Site) -> tuple[Tensor, Tensor]:
    """The weight reading a hook site's units into the residual (canonical view) and its bias."""
    name = "W_O" if site.name == "hook_z" else "W_out"
    w_site = site_of(architecture_of(model.cfg), site.layer, name)
    module = _stored(model, w_site)
    if module.bias is None:
        raise InputValueError(f"{site.address}: {type(module).__name__} has no bias to fold a replacement value into")
    return weight_view(model, w_site), module.bias


# -- running part of the model ----------------------------------------------------


class _Stop(Exception):
    """Raised by a hook to end a forward once the wanted activation is captured."""


def residual_before(model: TransformerBridge, tokens: Tensor, layer: int) -> Tensor:
    """The residual stream entering block ``layer``."""
    if layer == 0:
        return _capture(model, tokens, "blocks.0.hook_in")
    return model(tokens, stop_at_layer=layer)


def _capture(model: TransformerBridge, tokens: Tensor, name: str, replace: tuple[str, Tensor] | None = None) -> Tensor:
    """Run ``model`` until hook point ``name`` and return its value; ``replace`` swaps one hook's value in."""
    got: list[Tensor] = []

    def grab(module, inputs, output):
        got.append(output)
        raise _Stop

    handles = [model.hook_dict[name].register_forward_hook(grab)]
    if replace is not None:
        handles.append(model.hook_dict[replace[0]].register_forward_hook(lambda m, i, o: replace[1].to(o.dtype)))
    try:
        model(tokens)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return got[0]


def run_from(model: TransformerBridge, residual: Tensor, layer: int) -> Tensor:
    """Blocks ``layer`` .. last on a cached residual stream; returns the final residual (pre-LN).

    The bridge cannot start a forward mid-stack (3.9 refuses ``start_at_layer``
    and 4.x still runs the blocks below), so the residual is swapped in at
    ``blocks.{layer}.hook_in`` of a forward on placeholder tokens and the run
    stops before the final norm.
    """
    placeholder = torch.zeros(residual.shape[:2], dtype=torch.long, device=residual.device)
    return _capture(model, placeholder, "ln_final.hook_in", (f"blocks.{layer}.hook_in", residual))


def to_logits(model: TransformerBridge, residual: Tensor) -> Tensor:
    """Final norm and unembedding of residuals ``[..., d_model]`` -> logits ``[..., d_vocab]``."""
    flat = residual.reshape(1, -1, residual.shape[-1])
    logits = apply_softcap(model.unembed(model.ln_final(flat)), getattr(model.cfg, "output_logits_soft_cap", None))
    return logits.reshape(*residual.shape[:-1], logits.shape[-1])


def wrap(hf_model: nn.Module, tokenizer=None, model_name: str = "custom") -> TransformerBridge:
    """A TransformerBridge around an already built Hugging Face causal LM, without any download.

    ``TransformerBridge.boot_transformers`` reads its config and tokenizer from the Hub;
    this wraps a model in memory (a random ``GPT2LMHeadModel(GPT2Config(...))``, the
    built-in model's weights) through TransformerLens's own builder.
    """
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    architecture = (getattr(hf_model.config, "architectures", None) or [type(hf_model).__name__])[0]
    return build_bridge_from_module(hf_model, architecture, hf_config=hf_model.config, tokenizer=tokenizer,
                                    model_name=model_name)


def load_pretrained(name: str) -> TransformerBridge:
    return TransformerBridge.boot_transformers(name)
