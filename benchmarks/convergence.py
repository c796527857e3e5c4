"""Steps and wall-clock until the discovery criteria first hold, per schedule.

Runs the built-in task with early stopping and validation every ``--eval-every``
steps, for the default settings, the published preset (capped at
``--max-steps``: 40,000 steps are out of reach on CPU) and faster schedules.
The criteria are never changed. Target: steps to success <= 4,000 (a tenth of
the published 40,000).

    python benchmarks/convergence.py
    python benchmarks/convergence.py --schedules default --roots 0,1,2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import builtin_search  # noqa: E402

from kcs_tl.discovery import DiscoveryConfig  # noqa: E402

PUBLISHED_STEPS = 40_000
TARGET_STEPS = PUBLISHED_STEPS // 10

SCHEDULES = {
    "default": {},
    "published": "published",
    "hard_concrete": {"relaxation": "hard_concrete"},
    "lr_0.5": {"lr": 0.5},
}


def schedule(name: str, max_steps: int, eval_every: int) -> DiscoveryConfig:
    spec = SCHEDULES[name]
    base = DiscoveryConfig.preset(spec) if isinstance(spec, str) else DiscoveryConfig(**spec)
    return DiscoveryConfig.from_json(base.to_json() | {
        "steps": min(base.steps, max_steps), "eval_every": eval_every, "early_stop": True})


def main(argv=None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--schedules", default=",".join(SCHEDULES), help=f"comma list from {list(SCHEDULES)}")
    p.add_argument("--roots", default="0")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=TARGET_STEPS)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--quick", action="store_true", help="default schedule, 6 steps: checks the printed fields")
    args = p.parse_args(argv)
    if args.quick:
        args.schedules, args.roots, args.max_steps, args.eval_every = "default", "0", 6, 3
    rows = []
    for name in args.schedules.split(","):
        if name not in SCHEDULES:
            raise SystemExit(f"unknown schedule {name!r}; choose from {list(SCHEDULES)}")
        for root in args.roots.split(","):
            task, found, _, seconds = builtin_search(int(root), args.seed, schedule(name, args.max_steps,
                                                                                   args.eval_every), n_random=0)
            met = found.stopped.startswith("criteria met")
            best = found.history.set_index("step").loc[found.best_step]
            rows.append({"schedule": name, "root": task.root, "steps_to_success": found.best_step if met else None,
                         "seconds": round(seconds, 1), "stopped": found.stopped,
                         "best_step": found.best_step, "val_target_top1": round(float(best.val_target_top1), 4),
                         "val_sparsity": round(float(best.val_sparsity), 4),
                         "meets_target": met and found.best_step <= TARGET_STEPS})
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    print(f"target: success within {TARGET_STEPS} steps (published: {PUBLISHED_STEPS})")
    return table


if __name__ == "__main__":
    main()
