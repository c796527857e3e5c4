"""The only place that knows a TransformerLens generation: HookedTransformer and TransformerBridge.

The rest of kcs_tl calls the functions below; each picks the adapter for the
model's class (``adapters.hooked`` or ``adapters.bridge``) and refuses any other
class with one message naming both. Both adapters speak TransformerLens's
canonical layout and addresses, so sites, masks and saved subnetworks are the
same whichever class computed them.
"""

from __future__ import annotations

from types import ModuleType

from kcs_tl.adapters import hooked
from kcs_tl.adapters.hooked import (
    GRANULARITIES, HOOK_NAMES, WEIGHT_NAMES, Architecture, Matrix, Site, hook_broadcast, unit,
)

try:
    from kcs_tl.adapters import bridge
except ImportError:  # a TransformerLens without model_bridge; pyproject asks for >= 3.9, which has it
    bridge = None

SUPPORTED = ("transformer_lens.HookedTransformer (TransformerLens 3.x), "
             "transformer_lens.model_bridge.TransformerBridge (TransformerLens 3.9 and 4.x)")


def adapter(model) -> ModuleType:
    """The adapter module for ``model``'s class; anything else is refused naming both supported classes."""
    if hooked.is_model(model):
        return hooked
    if bridge is not None and bridge.is_model(model):
        return bridge
    raise TypeError(f"kcs_tl needs a TransformerLens model, got {type(model).__name__}. Supported: {SUPPORTED}")


def _dispatch(name: str):
    def call(model, *args, **kwargs):
        return getattr(adapter(model), name)(model, *args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = getattr(hooked, name).__doc__
    return call


check_model = _dispatch("check_model")
architecture = _dispatch("architecture")
check_site = _dispatch("check_site")
activation_bytes = _dispatch("activation_bytes")
resolve_layers = _dispatch("resolve_layers")
weight_site = _dispatch("weight_site")
hook_site = _dispatch("hook_site")
activation_shape = _dispatch("activation_shape")
weight_target = _dispatch("weight_target")
weight_view = _dispatch("weight_view")
stored_layout = _dispatch("stored_layout")
hook_point = _dispatch("hook_point")
readout = _dispatch("readout")
fingerprint = _dispatch("fingerprint")
residual_before = _dispatch("residual_before")
run_from = _dispatch("run_from")
head = _dispatch("head")


def fingerprint_mismatch(expected: dict, model) -> list[str]:
    """Human-readable differences between a saved fingerprint and ``model``."""
    return adapter(model).fingerprint_mismatch(expected, model)

__all__ = ["GRANULARITIES", "HOOK_NAMES", "SUPPORTED", "WEIGHT_NAMES", "Architecture", "Matrix", "Site",
           "activation_bytes", "activation_shape", "adapter", "architecture", "check_model", "check_site", "fingerprint", "fingerprint_mismatch", "head", "hook_broadcast", "hook_point",
           "hook_site", "readout", "residual_before", "resolve_layers", "run_from", "stored_layout",
           "unit", "weight_site", "weight_target", "weight_view"]
