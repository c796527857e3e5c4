"""``kcs-tl demo``: the whole story offline on the built-in model."""

from __future__ import annotations

from pathlib import Path

from kcs_tl import zoo
from kcs_tl.cli.discover import run
from kcs_tl.cli.options import search_config, search_options
from kcs_tl.zoo.task import forgetting_task


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="the whole story on the built-in model, offline, on CPU",
                       description="Pick an IsA subtree of the built-in world as TargetKG, discover its "
                       "knowledge-critical subnetwork, evaluate it against random subnetworks of the same "
                       "size, print the table and write the subnetwork and an HTML report.")
    p.add_argument("--root", help="IsA subtree root to forget (default: the first of the world's target roots)")
    search_options(p, "kcs_out/demo")
    p.set_defaults(func=command)


def command(args) -> None:
    cfg = search_config(args)
    z = zoo.load("tiny-world")
    task = forgetting_task(z, args.root or 0)
    print(f"built-in model tiny-world: {z.model.cfg.n_layers} layers, d_model {z.model.cfg.d_model}; "
          f"TargetKG: the {len(task.target)} IsA facts under {task.root!r} (e.g. {task.target[0]}); "
          f"ControlKG: {len(task.control)} other facts; ControlLM: {len(task.lm)} blocks of narrative text")
    run(z.model, task.target, task.control, task.lm, cfg, Path(args.out), args.overwrite, model_name="tiny-world",
        with_report=not args.no_report)
