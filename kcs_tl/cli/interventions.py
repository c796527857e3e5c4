"""``kcs-tl interventions``: find (or rank) the units that mediate a built-in probe, write the result.

    kcs-tl interventions --task agreement --units 20 --out kcs_out/agreement
    kcs-tl interventions --task gender --method integrated_gradients --units 20

The output folder (written atomically) holds ``subnetwork/`` (a unit-level
``Subnetwork``, loadable with ``Subnetwork.load``), ``effect.csv`` (original vs
intervened vs random sets of the same size), ``history.csv`` for searches, and
``summary.html``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from kcs_tl.analysis.report import write_report
from kcs_tl.baselines.attribution import UNIT_METHODS, unit_baseline
from kcs_tl.files import check_writable, result_folder
from kcs_tl.interventions.counting import count_forwards
from kcs_tl.interventions.effect import evaluate_intervention
from kcs_tl.interventions.find import METHODS, InterventionConfig, find_interventions
from kcs_tl.interventions.task import agreement_task, gender_task
from kcs_tl.masks.masked_model import ABLATIONS
from kcs_tl.validate import InputValueError

TASKS = {"agreement": agreement_task, "gender": gender_task}


def _layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices such as 0,1,2, got {text!r}") from None


def add_parser(sub) -> None:
    p = sub.add_parser("interventions", help="sparse neuron interventions on a built-in probe",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=sorted(TASKS), required=True, help="agreement: flip subject-verb number; "
                   "gender: make P(she) = P(he) after profession prompts")
    p.add_argument("--method", choices=METHODS + UNIT_METHODS, default="hard_concrete")
    p.add_argument("--units", type=int, help="set size: held by the search's Lagrangian; required for the "
                   "attribution baselines (default for searches: the l0-weight penalty decides)")
    p.add_argument("--l0-weight", type=float, default=0.01, help="loss per expected unit when --units is not given")
    p.add_argument("--layers", type=_layers, help="comma-separated layers (default: every layer)")
    p.add_argument("--hooks", nargs="+", default=["mlp.hook_post"], help="mlp.hook_post and/or attn.hook_z")
    p.add_argument("--ablation", choices=ABLATIONS, default="mean", help="the intervened value (learned: "
                   "searches only; baselines then use the mean)")
    p.add_argument("--steps", type=int, default=InterventionConfig.steps, help="search steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-random", type=int, default=3, help="random sets of the same size to compare with")
    p.add_argument("--out", default="kcs_out/interventions", help="output folder (default: kcs_out/interventions)")
    p.add_argument("--overwrite", action="store_true", help="replace a result already in --out")
    p.set_defaults(func=command)


def command(args) -> None:
    from kcs_tl import zoo

    check_writable(args.out, args.overwrite)
    config = InterventionConfig(method=args.method if args.method in METHODS else "hard_concrete",
                                hooks=tuple(args.hooks), layers=args.layers, ablation=args.ablation,
                                target_units=args.units, l0_weight=args.l0_weight, steps=args.steps, seed=args.seed)
    if args.method in UNIT_METHODS and args.units is None:
        raise InputValueError(f"--method {args.method} ranks units and needs --units N (how many to keep)")
    z = zoo.load("tiny-world")
    task = TASKS[args.task](z)
    start = time.perf_counter()
    history = None
    if args.method in METHODS:
        found = find_interventions(z.model, task, config, n_random=args.n_random, seed=args.seed)
        sub, history, passes, effect = found.subnetwork, found.history, found.forward_passes, found.effect
        seconds = found.wall_s
    else:
        with count_forwards(z.model) as count:
            sub = unit_baseline(z.model, task, args.method, size=args.units, hooks=config.hooks,
                                layers=config.layers, ablation="zero" if args.ablation == "zero" else "mean",
                                seed=args.seed)
        passes, seconds = count.calls, time.perf_counter() - start
        effect = evaluate_intervention(z.model, task, sub, n_random=args.n_random, seed=args.seed)
    with result_folder(args.out, args.overwrite) as tmp:
        sub.save(tmp / "subnetwork")
        effect.table.to_csv(tmp / "effect.csv", index_label="variant")
        if history is not None:
            history.to_csv(tmp / "history.csv", index=False)
        write_report(tmp / "summary.html", f"Sparse interventions: {args.task} ({args.method})",
                     {"Effect": effect._repr_html_(), "Units per layer": sub.stats("layer").to_html(index=False)})
    print(effect)
    print(f"\n{args.method}: {sub.n_in_subnetwork()} units, {passes} forward passes, {seconds:.0f} s")
    print(f"wrote {Path(args.out) / 'subnetwork'}, effect.csv, summary.html"
          + (", history.csv" if history is not None else ""))
