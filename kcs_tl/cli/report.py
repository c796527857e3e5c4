"""``kcs-tl report``: the HTML report of a run folder written by ``demo`` or ``discover``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kcs_tl.analysis.report import report
from kcs_tl.cli.options import KG_HELP
from kcs_tl.data import KnowledgeGraph
from kcs_tl.files import existing_result, read_json
from kcs_tl.loading import load_kg, load_model
from kcs_tl.evaluation import Evaluation
from kcs_tl.subnetwork import Subnetwork


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="write the HTML report of a run folder",
                       description="Components, activation patching on the TargetKG's facts, the comparison "
                       "of the two beside random subnetworks, circuitsvis views: one self-contained HTML file.")
    p.add_argument("run_dir", help="a folder written by demo or discover")
    p.add_argument("--model", help="model the subnetwork was found on (default: the run's, else tiny-world)")
    p.add_argument("--target", help=f"TargetKG (default: the run's target.jsonl): {KG_HELP}")
    p.add_argument("--control", help=f"ControlKG (default: the run's control.jsonl): {KG_HELP}")
    p.add_argument("--n-random", type=int, default=20, help="random subnetworks to compare with (default 20)")
    p.add_argument("--out", help="HTML file to write (default: RUN_DIR/report.html)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=command)


def command(args) -> None:
    if not Path(args.run_dir).is_dir():
        raise FileNotFoundError(f"RUN_DIR {args.run_dir} is not a folder; give one written by demo or discover")
    run_dir = existing_result(args.run_dir)
    out = Path(args.out) if args.out else run_dir / "report.html"
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"--out {out} exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out {out}: folder {out.parent} does not exist")
    info = read_json(run_dir / "run.json", "the run's settings (written by demo / discover)") \
        if (run_dir / "run.json").is_file() else {}
    name = args.model or info.get("model") or "tiny-world"
    target = load_kg(args.target) if args.target else KnowledgeGraph.load(run_dir / "target.jsonl")
    control = (load_kg(args.control) if args.control else
               KnowledgeGraph.load(run_dir / "control.jsonl") if (run_dir / "control.jsonl").is_file() else None)
    model = load_model(name)
    sub = Subnetwork.load(run_dir / "subnetwork", model=model)
    evaluation = None
    if (run_dir / "evaluation.csv").is_file():
        evaluation = Evaluation(pd.read_csv(run_dir / "evaluation.csv"), sub.sparsity(), sub.n_in_subnetwork())
    done = report(model, sub, target, out, control=control, evaluation=evaluation,
                  title=info.get("title"), n_random=args.n_random)
    print(done)
    print(f"wrote {out}")
