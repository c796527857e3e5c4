"""The only place that knows a TransformerLens generation (HookedTransformer now)."""

from kcs_tl.adapters.hooked import (
    GRANULARITIES, HOOK_NAMES, WEIGHT_NAMES, Architecture, Matrix, Site, architecture, check_model, fingerprint,
    hook_site, weight_site,
)

__all__ = ["GRANULARITIES", "HOOK_NAMES", "WEIGHT_NAMES", "Architecture", "Matrix", "Site", "architecture",
           "check_model", "fingerprint", "hook_site", "weight_site"]
