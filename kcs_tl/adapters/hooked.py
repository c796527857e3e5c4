"""Everything kcs_tl knows about `HookedTransformer`: which modules hold the sites' weights and hook points.

The sites themselves (``adapters.sites``) are class-neutral; this module
resolves them to the modules of a HookedTransformer, which stores every weight
in the canonical layout, and runs parts of its forward.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize
from transformer_lens.utilities import apply_softcap

try:
    from transformer_lens import HookedTransformer
except ImportError:  # TransformerLens 4.x removed it; adapters.bridge serves those users
    HookedTransformer = None

from kcs_tl.adapters.sites import Site, check_config
from kcs_tl.validate import InputTypeError, InputValueError


def is_model(model) -> bool:
    return HookedTransformer is not None and isinstance(model, HookedTransformer)


def check_model(model) -> HookedTransformer:
    """Refuse anything that is not a HookedTransformer kcs_tl can mask, naming what is supported."""
    if not is_model(model):
        raise InputTypeError(
            f"kcs_tl needs a transformer_lens.HookedTransformer, got {type(model).__name__}. "
            "Supported: HookedTransformer (TransformerLens 3.x)."
        )
    check_config(model.cfg)
    return model


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
            raise InputValueError(f"{site.address}: expected a Parameter of shape {site.full_shape} in "
                                  f"{type(target).__name__}, found {found}; kcs_tl does not know this layout")
    return site


def owner(model: HookedTransformer, site: Site) -> nn.Module:
    """The module holding the site's weight (as an attribute) or the hook point itself."""
    block = model.blocks[site.layer]
    sub = getattr(block, site.module)
    return getattr(sub, site.name) if site.kind == "hook" else sub


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


def residual_before(model: HookedTransformer, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    """The residual stream entering block ``layer`` (layer 0: the embeddings)."""
    return model(tokens, stop_at_layer=layer)


def run_from(model: HookedTransformer, residual: torch.Tensor, layer: int) -> torch.Tensor:
    """Blocks ``layer`` .. last on a cached residual stream; returns the final residual (pre-LN)."""
    return model(residual, start_at_layer=layer, stop_at_layer=model.cfg.n_layers)


def to_logits(model: HookedTransformer, residual: torch.Tensor) -> torch.Tensor:
    """Final layer norm and unembedding of residuals ``[..., d_model]`` -> logits ``[..., d_vocab]``.

    Lets a caller unembed only the positions it needs (TransformerLens's own
    forward unembeds every position).
    """
    flat = residual.reshape(1, -1, residual.shape[-1])
    if model.cfg.normalization_type is not None:
        flat = model.ln_final(flat)
    logits = apply_softcap(model.unembed(flat), model.cfg.output_logits_soft_cap)
    return logits.reshape(*residual.shape[:-1], logits.shape[-1])


def pretrained_names() -> list[str]:
    """The model names ``HookedTransformer.from_pretrained`` knows."""
    from transformer_lens.loading_from_pretrained import OFFICIAL_MODEL_NAMES

    return list(OFFICIAL_MODEL_NAMES)


def is_pretrained_name(name: str) -> bool:
    """Whether ``name`` (or an alias of it) is a model TransformerLens 3.x can load."""
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        get_official_model_name(name)
    except ValueError:
        return False
    return True


def load_pretrained(name: str) -> HookedTransformer:
    return HookedTransformer.from_pretrained(name)
