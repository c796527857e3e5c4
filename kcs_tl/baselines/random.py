"""Random subnetworks of the same size: the baseline a knowledge-critical one must beat."""

from __future__ import annotations

import torch

from kcs_tl.subnetwork import Subnetwork


def random_like(subnetwork: Subnetwork, seed: int = 0) -> Subnetwork:
    """A subnetwork with exactly as many members per site as ``subnetwork``, placed uniformly."""
    gen = torch.Generator().manual_seed(seed)
    masks = {}
    for a, m in subnetwork.masks.items():
        flat = torch.zeros(m.numel(), dtype=torch.bool)
        flat[torch.randperm(m.numel(), generator=gen)[: int(m.sum())]] = True
        masks[a] = flat.reshape(m.shape)
    return Subnetwork(masks, dict(subnetwork.sites), dict(subnetwork.fingerprint),
                      dict(subnetwork.replacements), {"derived": f"random_like(seed={seed})"})
