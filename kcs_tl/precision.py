"""The dtype kcs_tl sums in: float32 at least, float64 when the model computes in float64."""

import torch
from torch import Tensor


def at_least_fp32(x: Tensor) -> Tensor:
    """``x`` in float32, or as it is when float64: sums over a half-precision model's outputs run in
    float32, and a float64 model stays float64 throughout (the tests compare summation orders in it)."""
    return x if x.dtype == torch.float64 else x.float()
