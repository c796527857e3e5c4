"""HookedTransformer vs TransformerBridge on the built-in model, side by side in one process.

Loads the built-in model's weights as both classes (the bridge wraps an
equivalent Hugging Face GPT-2), runs the same discover (same config and seed)
and evaluate on each, and prints: the Jaccard index of the two subnetworks and
how many units differ, the largest difference between the two evaluation
tables, the bridge's evaluation of the HookedTransformer's subnetwork (a saved
subnetwork moved across classes), and the median search-step time of each
class with their ratio. Needs TransformerLens 3.x (the only line with both).

    python benchmarks/bridge.py              # default DiscoveryConfig (early stop)
    python benchmarks/bridge.py --quick      # a few steps: checks the fields only
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_seconds  # noqa: E402

from kcs_tl import discover, evaluate, zoo  # noqa: E402
from kcs_tl.discovery import DiscoveryConfig, Search  # noqa: E402
from kcs_tl.zoo.task import forgetting_task  # noqa: E402

CLASSES = ("hooked", "bridge")


def table_difference(a, b) -> tuple[float, float]:
    """Largest absolute and relative (to max(|value|, 1)) difference between two evaluation tables."""
    key = ["set", "model", "metric"]
    va, vb = a.table.set_index(key).value, b.table.set_index(key).value
    diff = (va - vb).abs()
    return float(diff.max()), float((diff / vb.abs().clip(lower=1)).max())


def step_times(models: dict, task, cfg, repeats: int) -> dict:
    """Median search-step time of each class, timed in turn (hooked, bridge, hooked, ...) so load drifts cancel."""
    searches = {c: Search(models[c].model, task.target, task.control, task.lm, cfg) for c in CLASSES}
    times = {c: [] for c in CLASSES}
    try:
        for c in CLASSES:
            searches[c].step()  # warm-up
        for _ in range(repeats):
            for c in CLASSES:
                times[c].append(median_seconds(searches[c].step, torch.device("cpu"), 1, 0))
    finally:
        for search in searches.values():
            search.close()
    return {f"{c}_step_s": statistics.median(t) for c, t in times.items()}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="6 steps, small task: checks the fields only")
    p.add_argument("--steps", type=int, default=None, help="search steps (default: DiscoveryConfig's)")
    p.add_argument("--repeats", type=int, default=5, help="timed search steps per class")
    p.add_argument("--root", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    models = {c: zoo.load("tiny-world", model_class=c) for c in CLASSES}
    sizes = dict(n_control=60, n_blocks=12) if args.quick else {}
    task = forgetting_task(models["hooked"], args.root, **sizes)
    overrides = dict(steps=6, eval_every=3, kg_batch_size=16, lm_batch_size=2) if args.quick else {}
    if args.steps:
        overrides["steps"] = args.steps
    cfg = DiscoveryConfig(progress=False, seed=0, **overrides)
    print(f"built-in model, TargetKG {task.root} ({len(task.target)} facts), {cfg.steps} steps max, seed 0")

    row, found, ev, seconds = step_times(models, task, cfg, args.repeats), {}, {}, {}
    for c in CLASSES:
        model = models[c].model
        start = time.perf_counter()
        found[c] = discover(model, task.target, task.control, task.lm, cfg)
        seconds[c] = time.perf_counter() - start
        ev[c] = evaluate(model, found[c].subnetwork, task.target, task.control, task.lm, n_random=1)
        print(f"\n== {type(model).__name__}: {found[c]!r}, discover {seconds[c]:.1f} s")
        print(ev[c].summary().to_string(float_format=lambda x: f"{x:.4f}"))

    sub_h, sub_b = found["hooked"].subnetwork, found["bridge"].subnetwork
    row["jaccard"] = sub_h.jaccard(sub_b)
    row["units_differing"] = sum(int((sub_h.expanded(a) ^ sub_b.expanded(a)).sum()) for a in sub_h.masks)
    row["units_in_subnetwork"] = sub_h.n_in_subnetwork(), sub_b.n_in_subnetwork()
    row["eval_abs_diff"], row["eval_rel_diff"] = table_difference(ev["bridge"], ev["hooked"])
    crossed = evaluate(models["bridge"].model, sub_h, task.target, task.control, task.lm, n_random=1)
    row["crossed_abs_diff"], row["crossed_rel_diff"] = table_difference(crossed, ev["hooked"])
    # How far float rounding alone moves this search: the HookedTransformer with its weights changed in the 7th digit.
    nudged = zoo.load("tiny-world", model_class="hooked").model
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p_ in nudged.parameters():
            p_.mul_(1 + 1e-7 * torch.randn(p_.shape, generator=g))
    row["jaccard_nudged"] = discover(nudged, task.target, task.control, task.lm, cfg).subnetwork.jaccard(sub_h)
    row["step_ratio"] = row["bridge_step_s"] / row["hooked_step_s"]
    row["discover_s"] = seconds

    print("\n== side by side")
    print(f"  subnetworks: Jaccard {row['jaccard']:.6f}, {row['units_differing']} units differ "
          f"(in subnetwork: hooked {row['units_in_subnetwork'][0]:,}, bridge {row['units_in_subnetwork'][1]:,})")
    print(f"  control: HookedTransformer vs itself with weights changed by ~1e-7 (relative): Jaccard "
          f"{row['jaccard_nudged']:.6f}")
    print(f"  evaluation tables (each class its own subnetwork): max |diff| {row['eval_abs_diff']:.3g}, "
          f"max relative {row['eval_rel_diff']:.3g}")
    print(f"  HookedTransformer's subnetwork evaluated on the bridge: max |diff| {row['crossed_abs_diff']:.3g}, "
          f"max relative {row['crossed_rel_diff']:.3g}")
    print(f"  search step (median of {args.repeats}, the classes timed in turn): hooked {row['hooked_step_s'] * 1e3:.1f} ms, "
          f"bridge {row['bridge_step_s'] * 1e3:.1f} ms, ratio bridge/hooked {row['step_ratio']:.2f}")
    print(f"  whole discover: hooked {seconds['hooked']:.1f} s, bridge {seconds['bridge']:.1f} s")
    return row


if __name__ == "__main__":
    main()
