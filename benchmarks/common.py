"""What the benchmarks share: models, batches, a timer and a peak-memory meter.

Times are medians of repeated runs after warm-up, in one process, so ratios
compare like with like on a shared, noisy machine. Peak memory on CPU is the
rise of the process's resident high-water mark (reset through
``/proc/self/clear_refs``) over its resident size before the run; on CUDA it is
``max_memory_allocated`` above what was allocated before.
"""

from __future__ import annotations

import ctypes
import re
import statistics
import time
from typing import Callable

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from kcs_tl.data.batch import IGNORE_INDEX, KGBatch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak extra memory while ``fn`` runs (see the module docstring for how)."""
    if device.type == "cuda":
        sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed memory back so it is not reused unseen
    except OSError:
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) * 1024


def random_model(n_layers: int = 12, d_model: int = 768, d_vocab: int = 50257, n_ctx: int = 1024,
                 device: str = "cpu", seed: int = 0) -> HookedTransformer:
    """A randomly initialised GPT-2-shaped model (cost does not depend on trained weights)."""
    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=d_model, d_head=64, n_heads=d_model // 64, d_mlp=4 * d_model,
        d_vocab=d_vocab, n_ctx=n_ctx, act_fn="gelu_new", normalization_type="LN", seed=seed, device=device,
    )
    return HookedTransformer(cfg).eval()


def synthetic_kg(n: int, length: int, vocab: int, seed: int) -> KGBatch:
    """``n`` random sentences of ``length`` tokens whose last token is the (one-token) tail."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (n, length), generator=gen)
    labels = torch.full_like(tokens, IGNORE_INDEX)
    labels[:, length - 2] = tokens[:, length - 1]
    return KGBatch(tokens=tokens, labels=labels, label_mask=labels != IGNORE_INDEX,
                   first_label_pos=torch.full((n,), length - 2), lengths=torch.full((n,), length),
                   triplet_index=torch.arange(n), sentences=[f"synthetic {seed}:{i}" for i in range(n)],
                   templates=["synthetic"] * n)


def synthetic_data(model: HookedTransformer, kg_batch: int, kg_len: int, lm_batch: int, lm_len: int,
                   seed: int = 0) -> tuple[KGBatch, KGBatch, torch.Tensor]:
    """Target and control KG batches and LM blocks of the given sizes, for a model without data."""
    vocab = model.cfg.d_vocab
    lm = torch.randint(0, vocab, (2 * lm_batch, lm_len), generator=torch.Generator().manual_seed(seed + 2))
    return synthetic_kg(kg_batch, kg_len, vocab, seed), synthetic_kg(2 * kg_batch, kg_len, vocab, seed + 1), lm


def mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def builtin_search(root: int | str, seed: int, cfg, n_random: int = 3):
    """Discover and evaluate on the built-in forgetting task; returns (task, discovery, evaluation, seconds)."""
    from kcs_tl import discover, evaluate, zoo
    from kcs_tl.discovery import DiscoveryConfig
    from kcs_tl.zoo.task import forgetting_task

    z = zoo.load("tiny-world")
    task = forgetting_task(z, root)
    cfg = DiscoveryConfig.from_json(cfg.to_json() | {"seed": seed, "progress": False})
    start = time.perf_counter()
    found = discover(z.model, task.target, task.control, task.lm, cfg)
    seconds = time.perf_counter() - start
    result = evaluate(z.model, found.subnetwork, task.target, task.control, task.lm, n_random=n_random, seed=seed)
    return task, found, result, seconds
