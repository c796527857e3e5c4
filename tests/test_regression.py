"""Behaviour pinned: a short fixed-seed search on the built-in model finds exactly these masks.

A change that is meant to keep behaviour (a refactor, a rename, a speed-up) keeps this
hash. A change meant to alter results updates ``PINNED`` in its own commit, saying what
changed and why. The run is in float64 (model, mask scores, losses), so the hash is the
same on every CPU and thread count: a mask would flip only if its score sat within about
1e-13 of the threshold, where float32 rounding (1e-7) can flip masks between machines.
"""

import hashlib

import torch

from kcs_tl import DiscoveryConfig, discover, zoo
from kcs_tl.zoo.task import forgetting_task

PINNED = {
    "masks_sha256": "0f96af976e12c737889c41e70c59f41458323817190e6e4006db765960d055cb",
    "n_in_subnetwork": 157427,
    "best_step": 4,
}


def mask_hash(subnetwork) -> str:
    """sha256 over every mask's address, shape and bits, in address order."""
    h = hashlib.sha256()
    for address in sorted(subnetwork.masks):
        mask = subnetwork.masks[address]
        h.update(f"{address}{tuple(mask.shape)}".encode())
        h.update(mask.to(torch.uint8).flatten().numpy().tobytes())
    return h.hexdigest()


def pinned_run():
    z = zoo.load("tiny-world")
    task = forgetting_task(z, 0, n_control=120, n_blocks=24)
    model = z.model.to(torch.float64)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the mask scores and the Lagrangian follow the default dtype
    try:
        return discover(model, task.target, task.control, task.lm, DiscoveryConfig(
            steps=12, eval_every=4, kg_batch_size=32, lm_batch_size=4, early_stop=False, progress=False, seed=3))
    finally:
        torch.set_default_dtype(default)


def test_a_fixed_seed_search_finds_the_pinned_subnetwork():
    found = pinned_run()
    got = {"masks_sha256": mask_hash(found.subnetwork), "n_in_subnetwork": found.subnetwork.n_in_subnetwork(),
           "best_step": found.best_step}
    assert got == PINNED, f"the pinned search now gives {got}"
