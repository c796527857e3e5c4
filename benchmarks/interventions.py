"""Sparse interventions on the built-in model: Hard Concrete vs REINFORCE vs attribution baselines.

(a) number agreement: flip the verb form on the 400 held-out prefixes;
(b) gender: shrink the mean |P(she) - P(he)| gap after the profession prompts;
(c) knowledge suppression: the learned weight subnetwork of ``discover`` vs
    weight magnitude, gradient x weight and random subnetworks of the same size.

For (a) and (b) every method keeps the same number of units (1% of the searched
MLP neurons, and 5% for gender, whose target sets no size; held by the
searches' Lagrangian; the baselines copy Hard Concrete's per-layer counts) and REINFORCE gets the same steps, so the same
forward passes, as Hard Concrete. ``--pareto`` adds a sweep of the L0 penalty
for both searches (effect vs set size). Prints every table next to the
issue's targets.

    python benchmarks/interventions.py            # ~ tens of minutes on 2 CPU cores
    python benchmarks/interventions.py --quick    # seconds: checks the fields
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import pandas as pd

from kcs_tl import zoo
from kcs_tl.analysis.methods import compare_methods
from kcs_tl.discovery import DiscoveryConfig
from kcs_tl.interventions import InterventionConfig, agreement_task, find_interventions, gender_task
from kcs_tl.zoo.task import forgetting_task

GOALS = {"agreement": ("accuracy <= 0.5 (chance)", lambda orig: 0.5),
         "gender": ("gap shrinks >= 80%", lambda orig: 0.2 * orig)}


def _show(title: str, table: pd.DataFrame) -> None:
    print(f"\n== {title}")
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.to_string(index=False, float_format=lambda x: f"{x:.4f}"))


def probe(z, name, task, config, sizes, pareto: list[float], pareto_methods=("hard_concrete", "reinforce"),
          compare: bool = True) -> dict:
    out = {}
    if compare:
        out["table"] = _compare(z, name, task, config, sizes)
    if pareto:
        out["pareto"] = _pareto(z, name, task, config, pareto, pareto_methods)
    return out


def _compare(z, name, task, config, sizes) -> pd.DataFrame:
    table = compare_methods(z.model, task, sizes=sizes, config=config)
    _show(f"({'a' if name == 'agreement' else 'b'}) {name}: methods at matched sizes "
          f"(target_effect = test {task.effect_name})", table)
    goal_text, goal = GOALS[name]
    for size in sizes:
        rows = table[table["size"] == size].set_index("method")
        orig = float(rows.target_original.iloc[0])
        hc = rows.loc["hard_concrete"]
        meets = hc.target_effect <= goal(orig) and hc.lm_damage <= 0.05
        print(f"target ({goal_text}, LM perplexity within 5%; budget {size} units): Hard Concrete "
              f"{task.effect_name} {orig:.3f} -> {hc.target_effect:.3f} with {int(hc.n_units)} units, "
              f"perplexity {hc.lm_damage:+.2%}: {'meets' if meets else 'MISSES'}; random same size "
              f"{rows.loc['random'].target_effect:.3f}; REINFORCE {rows.loc['reinforce'].target_effect:.3f} "
              f"with {int(rows.loc['reinforce'].n_units)} units")
    return table


def _pareto(z, name, task, config, pareto, methods) -> pd.DataFrame:
    goal_text, goal = GOALS[name]
    points = []
    for method in methods:
        for w in pareto:
            r = find_interventions(z.model, task, dataclasses.replace(config, method=method, l0_weight=w,
                                                                      target_units=None))
            orig = r.effect.value("original", "test_" + task.effect_name)
            reach = r.cost_to_reach(goal(orig))
            points.append({"method": method, "l0_weight": w, "units": r.n_units,
                           "test_effect": r.effect.value("intervened", "test_" + task.effect_name),
                           "random_effect": r.effect.value("random", "test_" + task.effect_name),
                           "lm_ppl_change": r.effect.ppl_change, "forward_passes": r.forward_passes,
                           "wall_s": r.wall_s, "passes_to_goal": reach[0] if reach else None,
                           "seconds_to_goal": reach[1] if reach else None})
            print(f"  {method} l0_weight {w}: {points[-1]}", flush=True)
    table = pd.DataFrame(points)
    _show(f"{name}: Pareto sweep of the L0 penalty (goal: {goal_text}; passes/seconds to goal on the search prompts)",
          table)
    return table


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a few steps each: checks the printed fields")
    p.add_argument("--steps", type=int, default=700, help="search steps (both searches)")
    p.add_argument("--ablation", default="learned", help="zero, mean or learned")
    p.add_argument("--pareto", default="", help="comma-separated L0 weights to sweep, e.g. 0.002,0.005,0.02")
    p.add_argument("--pareto-methods", default="hard_concrete,reinforce")
    p.add_argument("--pareto-task", default="agreement,gender", help="tasks to sweep")
    p.add_argument("--only", default="a,b,c", help="which parts to run (a, b, c; a sweep alone: --only p)")
    args = p.parse_args(argv)
    z = zoo.load("tiny-world")
    steps = 4 if args.quick else args.steps
    config = InterventionConfig(ablation=args.ablation, steps=steps, eval_every=min(50, steps),
                                init_prob=0.25, target_anneal=0.6, batch_size=32, lm_batch_size=4)
    units = max(1, z.model.cfg.d_mlp * z.model.cfg.n_layers // 100)  # 1% of the searched MLP neurons
    pareto = [float(x) for x in args.pareto.split(",") if x] if not args.quick else [0.01]
    results, start = {}, time.perf_counter()
    parts = args.only.split(",")
    blocks = 16 if args.quick else 64
    for part, name, make in (("a", "agreement", agreement_task), ("b", "gender", gender_task)):
        sweep = pareto if name in args.pareto_task.split(",") else []
        if part in parts or ("p" in parts and sweep):
            sizes = [units] if name == "agreement" else [units, 5 * units]  # gender's target sets no size
            results[name] = probe(z, name, make(z, n_blocks=blocks), config, sizes, sweep,
                                  args.pareto_methods.split(","), compare=part in parts)
    if "c" in parts:
        task = forgetting_task(z, 0, n_control=100 if args.quick else 600, n_blocks=20 if args.quick else 200)
        cfg = DiscoveryConfig(progress=False, **({"steps": 4, "eval_every": 4} if args.quick else {}))
        table = compare_methods(z.model, task, config=cfg)
        _show(f"(c) knowledge suppression of {task.root!r}: discover vs weight baselines of the same size "
              "(target_effect = TargetKG top-1 of the remaining model; control_damage = ControlKG top-1 drop)", table)
        results["knowledge"] = {"table": table}
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return results


if __name__ == "__main__":
    main()
