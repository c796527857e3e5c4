"""The only place that knows a TransformerLens generation: HookedTransformer and TransformerBridge.

The rest of kcs_tl imports this facade only. What only reads the config
(sites, architectures, fingerprints) comes from ``adapters.sites`` and is the
same for both classes; what touches modules goes to the adapter for the
model's class (``adapters.hooked`` or ``adapters.bridge``). Any other class is
refused with one message naming both.
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch

from kcs_tl.adapters import hooked, sites
from kcs_tl.adapters.sites import (
    GRANULARITIES, HOOK_NAMES, WEIGHT_NAMES, Architecture, Matrix, Site, hook_broadcast, unit,
)
from kcs_tl.validate import InputTypeError

try:
    from kcs_tl.adapters import bridge
except ImportError:  # a TransformerLens without model_bridge; pyproject asks for >= 3.9, which has it
    bridge = None

SUPPORTED = ("transformer_lens.HookedTransformer (TransformerLens 3.x), "
             "transformer_lens.model_bridge.TransformerBridge (TransformerLens 3.9 and 4.x)")
HAS_HOOKED = hooked.HookedTransformer is not None
"""Whether this TransformerLens still has ``HookedTransformer`` (4.x removed it)."""


def adapter(model) -> ModuleType:
    """The adapter module for ``model``'s class; anything else is refused naming both supported classes."""
    if hooked.is_model(model):
        return hooked
    if bridge is not None and bridge.is_model(model):
        return bridge
    raise InputTypeError(f"kcs_tl needs a TransformerLens model, got {type(model).__name__}. Supported: {SUPPORTED}")


def _dispatch(name: str):
    """The function ``name`` of the adapter for the model's class."""
    def call(model, *args, **kwargs):
        return getattr(adapter(model), name)(model, *args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = getattr(hooked, name).__doc__
    return call


def _shared(fn):
    """``fn`` of ``adapters.sites`` (reads the config only), for a model of a supported class."""
    @functools.wraps(fn)
    def call(model, *args, **kwargs):
        adapter(model)
        return fn(model, *args, **kwargs)

    return call


check_model = _dispatch("check_model")
check_site = _dispatch("check_site")
weight_target = _dispatch("weight_target")
weight_view = _dispatch("weight_view")
stored_layout = _dispatch("stored_layout")
hook_point = _dispatch("hook_point")
readout = _dispatch("readout")
residual_before = _dispatch("residual_before")
run_from = _dispatch("run_from")
to_logits = _dispatch("to_logits")

activation_bytes = _shared(sites.activation_bytes)
resolve_layers = _shared(sites.resolve_layers)
hook_site = _shared(sites.hook_site)
activation_shape = _shared(sites.activation_shape)
fingerprint = _shared(sites.fingerprint)


def fingerprint_mismatch(expected: dict, model) -> list[str]:
    """Human-readable differences between a saved fingerprint and ``model``."""
    adapter(model)
    return sites.fingerprint_mismatch(expected, model)


def architecture(model) -> Architecture:
    """The maskable matrices, hook points and sizes of ``model`` (refusing what kcs_tl cannot mask)."""
    return sites.architecture_of(check_model(model).cfg)


def weight_site(model, layer: int, name: str, granularity: str = "weight") -> Site:
    """The site of matrix ``name`` in ``layer`` of ``model``: the same Site whichever class computes it.

    See ``sites.site_of`` for ``granularity`` and the address.
    """
    return sites.site_of(architecture(model), layer, name, granularity)


def wrap(hf_model, tokenizer=None, model_name: str = "custom"):
    """A TransformerBridge around an already built Hugging Face causal LM, without any download."""
    if bridge is None:
        raise ImportError("this TransformerLens has no model_bridge; kcs_tl needs TransformerLens >= 3.9")
    return bridge.wrap(hf_model, tokenizer, model_name)


def model_device(model) -> torch.device:
    """Where ``model``'s weights are (either class)."""
    return next(model.parameters()).device


def pretrained_names() -> list[str] | None:
    """The names TransformerLens's own loader knows; None on 4.x, whose bridge takes any Hugging Face name."""
    return hooked.pretrained_names() if HAS_HOOKED else None


def is_pretrained_name(name: str) -> bool:
    """Whether TransformerLens's own loader takes ``name`` (on 4.x: any name; loading says if it fails)."""
    return hooked.is_pretrained_name(name) if HAS_HOOKED else True


def load_pretrained(name: str):
    """TransformerLens's own loader, from local weights: ``HookedTransformer.from_pretrained`` on 3.x,
    ``TransformerBridge.boot_transformers`` on 4.x."""
    return hooked.load_pretrained(name) if HAS_HOOKED else bridge.load_pretrained(name)


__all__ = ["GRANULARITIES", "HAS_HOOKED", "HOOK_NAMES", "SUPPORTED", "WEIGHT_NAMES", "Architecture", "Matrix",
           "Site", "activation_bytes", "activation_shape", "adapter", "architecture", "check_model", "check_site",
           "fingerprint", "fingerprint_mismatch", "hook_broadcast", "hook_point", "hook_site", "is_pretrained_name",
           "load_pretrained", "model_device", "pretrained_names", "readout",
           "residual_before", "resolve_layers", "run_from", "stored_layout", "to_logits", "unit", "weight_site",
           "weight_target", "weight_view", "wrap"]
