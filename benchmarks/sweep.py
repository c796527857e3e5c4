"""A grid on the built-in model, on Ray and sequentially: wall-clock side by side, and seed stability.

Each mode runs the same grid from scratch into its own folder (nothing is
skipped). Ray starts locally with ``--num-cpus`` CPUs (its start-up counts in
its wall-clock) and each of its runs uses one torch thread; the sequential run
uses ``--sequential-threads`` (default 1, and then the two modes must give the
same numbers for the same seeds; the script says whether they do).

    python benchmarks/sweep.py                                 # all 18 TargetKGs x 3 seeds
    python benchmarks/sweep.py --roots 0,1,2 --seeds 0,1 --steps 100
    python benchmarks/sweep.py --roots 0,1,2,3 --sequential-threads 2      # the loop a user would write
    python benchmarks/sweep.py --quick                         # 2 small TargetKG tasks x 2 seeds, 4 steps
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import pandas as pd

from kcs_tl import zoo
from kcs_tl.sweeps import sweep
from kcs_tl.sweeps.execution import ray_available
from kcs_tl.sweeps.tables import STABILITY_COLUMNS, shown

COMPARED = ["sparsity", "target_top1", "control_ratio", "lm_ppl_rise", "n_in_subnetwork"]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--roots", default="all", help="'all' or indices into the built-in model's target_roots")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, help="override DiscoveryConfig.steps (default settings otherwise)")
    p.add_argument("--relaxation", help="override DiscoveryConfig.relaxation")
    p.add_argument("--eval-every", type=int, help="override DiscoveryConfig.eval_every")
    p.add_argument("--n-control", type=int, help="ControlKG triplets per task (forgetting_task's default: 600)")
    p.add_argument("--n-blocks", type=int, help="ControlLM blocks per task (forgetting_task's default: 200)")
    p.add_argument("--n-random", type=int, default=1, help="random subnetworks per evaluation (default 1)")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray (default 2)")
    p.add_argument("--sequential-threads", type=int, default=1,
                   help="torch threads of the sequential run (default 1, as each Ray worker: identical numbers)")
    p.add_argument("--modes", default="ray,sequential", help="which of ray,sequential to run, in this order")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "sweep"))
    p.add_argument("--quick", action="store_true", help="2 TargetKGs x 2 seeds, 4 steps: checks the printed fields")
    args = p.parse_args(argv)
    if args.quick:
        args.roots, args.seeds, args.steps, args.n_random, args.n_control, args.n_blocks = "0,1", "0,1", 4, 0, 60, 12
    roots = (range(len(zoo.load("tiny-world").target_roots)) if args.roots == "all"
             else [int(r) for r in args.roots.split(",")])
    sizes = {k: v for k, v in {"n_control": args.n_control, "n_blocks": args.n_blocks}.items() if v}
    tasks = [{"root": r, **sizes} for r in roots]
    seeds = [int(s) for s in args.seeds.split(",")]
    config = {"steps": args.steps, "eval_every": min(50, args.steps)} if args.steps else {}
    config |= {k: v for k, v in {"relaxation": args.relaxation, "eval_every": args.eval_every}.items() if v}
    modes = args.modes.split(",")
    if "ray" in modes and not ray_available():
        print("Ray is not installed (pip install 'kcs-tl[ray]'): measuring the sequential run only")
        modes = [m for m in modes if m != "ray"] or ["sequential"]
    results = {}
    for mode in modes:
        out = Path(args.out) / mode
        shutil.rmtree(out, ignore_errors=True)  # from scratch: a benchmark must not skip finished runs
        results[mode] = sweep("tiny-world", tasks, [config], seeds, out, n_random=args.n_random, executor=mode,
                              num_cpus=args.num_cpus if mode == "ray" else None,
                              cpus_per_run=1 if mode == "ray" else args.sequential_threads, progress=False)
        r = results[mode]
        print(f"{mode}: {len(r.runs)} runs in {r.wall_s:.1f} s ({int(r.runs.criteria_met.fillna(False).sum())} "
              f"met every criterion, {int((r.runs.status != 'finished').sum())} failed)", flush=True)
    first = results[modes[0]]
    report = {"runs": first.runs, "stability": first.stability, "wall_s": {m: r.wall_s for m, r in results.items()}}
    print(f"\ngrid: {first.runs.task.nunique()} TargetKGs x {len(seeds)} seeds = {len(first.runs)} runs, "
          f"settings {first.runs.settings.iloc[0]}, Ray on {args.num_cpus} CPUs (1 torch thread per run), "
          f"sequential on {args.sequential_threads} torch thread(s)")
    if len(results) == 2:
        ray, seq = results["ray"], results["sequential"]
        report["speedup"] = seq.wall_s / ray.wall_s
        diff = _max_difference(ray.runs, seq.runs)
        report["max_difference"] = diff
        print(f"wall-clock: Ray {ray.wall_s:.1f} s vs sequential {seq.wall_s:.1f} s: sequential / Ray = "
              f"{report['speedup']:.2f}x (Ray start-up included)")
        why = "" if args.sequential_threads == 1 else " (torch threads differ: float rounding does too)"
        print(f"same results on both: {'yes' if diff == 0 else f'no, largest difference {diff:.3g}{why}'}")
    met = first.runs.criteria_met.fillna(False).astype(bool)
    print(f"runs meeting every criterion: {int(met.sum())} of {len(met)}")
    print("\nseed stability (per TargetKG: mean Jaccard between seeds vs chance; intersection and "
          "majority evaluated):")
    print(shown(first.stability, STABILITY_COLUMNS))
    if len(first.stability) and "jaccard" in first.stability:
        s = first.stability
        print(f"\nmean over TargetKGs: Jaccard {s.jaccard.mean():.4f} vs chance {s.chance.mean():.4f} "
              f"({(s.jaccard / s.chance).mean():.1f}x); criteria met by the intersection in "
              f"{int(s.intersection_criteria_met.fillna(False).sum())} of {len(s)}, by the majority in "
              f"{int(s.majority_criteria_met.fillna(False).sum())} of {len(s)}")
    return report


def _max_difference(a: pd.DataFrame, b: pd.DataFrame) -> float:
    """The largest absolute difference of the compared numbers between two modes' runs (by run id)."""
    joined = a[["run_id"] + COMPARED].merge(b[["run_id"] + COMPARED], on="run_id", suffixes=("", "_b"))
    return float(max((joined[c] - joined[c + "_b"]).abs().max() for c in COMPARED))


if __name__ == "__main__":
    main()
