"""``discover`` with default settings on a SmolLM2-135M-shaped model: does it start, what does it cost?

A random model with SmolLM2-135M's shape (30 layers, d_model 576, 9 query heads
sharing 3 key/value heads, gated MLP 1536, RMSNorm, rotary, vocabulary 49,152;
cost does not depend on trained weights) and synthetic facts and text. For each
``teacher`` setting: what the auto rule estimated and chose, preparation time,
median step time, and the process's peak resident memory. Target: the default
configuration runs within a 24 GiB machine (the old default refused to start,
asking for 12.4 GiB of cached outputs on the issue's data).

    python benchmarks/large_vocab.py [--quick] [--lm-blocks 24] [--steps 3] [--teachers auto,on_the_fly]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import warnings
from pathlib import Path

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import synthetic_data  # noqa: E402

from kcs_tl.discovery import DiscoveryConfig, Search  # noqa: E402

SMOLLM2_135M = dict(n_layers=30, d_model=576, d_head=64, n_heads=9, n_key_value_heads=3, d_mlp=1536,
                    d_vocab=49_152, n_ctx=2048, act_fn="silu", normalization_type="RMS",
                    positional_embedding_type="rotary", rotary_dim=64, rotary_base=100_000, final_rms=True,
                    gated_mlp=True, default_prepend_bos=False)
QUICK = SMOLLM2_135M | dict(n_layers=2, d_model=64, d_head=16, n_heads=4, n_key_value_heads=2, d_mlp=128,
                            d_vocab=4096, n_ctx=128, rotary_dim=16)
TARGET_GIB = 24.0


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run(shape: dict, teacher: str, lm_blocks: int, steps: int, block_len: int) -> dict:
    model = HookedTransformer(HookedTransformerConfig(**shape, seed=0)).eval()
    target = synthetic_data(model, 90, 12, 1, 2)[0]  # 90 target sentences of 12 tokens
    control = synthetic_data(model, 450, 12, 1, 2, seed=5)[1]  # 900 control sentences
    lm = torch.randint(0, shape["d_vocab"], (lm_blocks, block_len), generator=torch.Generator().manual_seed(3))
    cfg = DiscoveryConfig(teacher=teacher, progress=False, lm_block_len=block_len)  # otherwise the defaults
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a random model knows no facts
        search = Search(model, target, control, lm, cfg)
    prepare = time.perf_counter() - start
    times, cpu = [], []
    with search:
        for _ in range(steps):
            t0, c0 = time.perf_counter(), time.process_time()
            search.step()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    n_masks = sum(p.numel() for p in search.masked.scores.values())
    return {"teacher": teacher, "chosen": search.data.setup["teacher"],
            "lm_blocks_per_backward": search.data.setup["lm_blocks_per_backward"], "prepare_s": prepare,
            "step_s": sorted(times)[len(times) // 2], "step_cpu_s": sorted(cpu)[len(cpu) // 2], "masks": n_masks,
            "peak_rss_gib": peak_rss_gib()}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 2-layer model, for the test suite")
    parser.add_argument("--lm-blocks", type=int, default=24)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--teachers", default="auto")
    args = parser.parse_args(argv)
    shape, block_len = (QUICK, 64) if args.quick else (SMOLLM2_135M, 512)
    rows = []
    for teacher in args.teachers.split(","):
        row = run(shape, teacher, args.lm_blocks, args.steps, block_len)
        rows.append(row)
        verdict = "meets" if row["peak_rss_gib"] <= TARGET_GIB else "MISSES"
        print(f"teacher={teacher!r}: {row['chosen']}, {row['lm_blocks_per_backward']} LM block(s) per "
              f"backward; prepare {row['prepare_s']:.1f} s, step {row['step_s']:.2f} s wall, "
              f"{row['step_cpu_s']:.2f} s CPU (median of {args.steps}), {row['masks']:,} masks, peak RSS "
              f"{row['peak_rss_gib']:.2f} GiB ({verdict} <= {TARGET_GIB:g} GiB)", flush=True)
    return rows


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
