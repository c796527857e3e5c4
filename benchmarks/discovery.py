"""Does discovery meet its bar on the built-in model? Several TargetKGs x several seeds.

For each (root, seed): default settings on CPU, then ``evaluate`` with random
subnetworks of the same size. Prints, per run and overall, the remaining
model's TargetKG top-1 (training and held-out templates), ControlKG top-1
relative to the original, ControlLM perplexity rise, sparsity, and the random
baseline's TargetKG top-1, next to the criteria.

    python benchmarks/discovery.py                      # 3 roots x 3 seeds
    python benchmarks/discovery.py --roots 0 --seeds 0  # one run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import builtin_search  # noqa: E402

from kcs_tl.discovery import DiscoveryConfig  # noqa: E402
from kcs_tl.evaluation import Criteria  # noqa: E402


def one_run(root, seed, cfg) -> dict:
    task, found, ev, seconds = builtin_search(root, seed, cfg)
    v, judged = ev.value, ev.criterion_values()
    return {
        "root": task.root, "seed": seed, "facts": len(task.target), "steps": found.best_step,
        "stopped": found.stopped, "seconds": round(seconds, 1),
        "target_top1_before": v("target", "original", "top1"),
        "target_top1": v("target", "remaining", "top1"),
        "held_out_top1_before": v("target_held_out", "original", "top1"),
        "held_out_top1": v("target_held_out", "remaining", "top1"),
        "held_out_dlogp": v("target_held_out", "remaining", "delta_logp"),
        "held_out_dlogp_random": v("target_held_out", "random", "delta_logp"),
        "control_ratio": judged["control_ratio"],
        "lm_ppl_rise": judged["lm_ppl_rise"],
        "sparsity": ev.sparsity,
        "random_target_top1": v("target", "random", "top1"),
        "criteria_met": all(ev.check().values()),
    }


def main(argv=None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--roots", default="0,1,2", help="indices into the world's target_roots")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, help="override DiscoveryConfig.steps")
    p.add_argument("--quick", action="store_true", help="one root, one seed, 6 steps: checks the printed fields")
    args = p.parse_args(argv)
    if args.quick:
        args.roots, args.seeds, args.steps = "0", "0", 6
    cfg = DiscoveryConfig(**({"steps": args.steps, "eval_every": min(50, args.steps)} if args.steps else {}))
    rows = []
    for r in args.roots.split(","):
        for s in args.seeds.split(","):
            rows.append(one_run(int(r), int(s), cfg))
            print({k: round(v, 4) if isinstance(v, float) else v for k, v in rows[-1].items()}, flush=True)
    table = pd.DataFrame(rows)
    c = Criteria()
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.round(4).to_string(index=False))
    random_gap = (table.target_top1_before - table.random_target_top1).abs().max()
    print(f"\ncriteria (remaining model): target top-1 <= {c.target_top1_max}, control top-1 >= "
          f"{c.control_top1_min_ratio} of original, LM ppl rise <= {c.lm_ppl_max_rise}, sparsity >= {c.sparsity_min}")
    print(f"runs meeting all criteria: {int(table.criteria_met.sum())} of {len(table)}")
    print(f"worst: target top-1 {table.target_top1.max():.3f}, control ratio {table.control_ratio.min():.3f}, "
          f"LM ppl rise {table.lm_ppl_rise.max():.4f}, sparsity {table.sparsity.min():.4f}")
    print(f"random subnetworks of the same size: TargetKG top-1 within {random_gap * 100:.1f} points of the "
          f"original (bar: 5)")
    print(f"held-out paraphrases: TargetKG top-1 {table.held_out_top1_before.mean():.3f} -> "
          f"{table.held_out_top1.mean():.3f} (mean); gold log-prob change {table.held_out_dlogp.mean():+.2f} "
          f"(random subnetworks: {table.held_out_dlogp_random.mean():+.2f})")
    return table


if __name__ == "__main__":
    main()
