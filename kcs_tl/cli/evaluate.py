"""``kcs-tl evaluate``: a saved subnetwork against the original model and random subnetworks of its size."""

from __future__ import annotations

from pathlib import Path

from kcs_tl.analysis.report import write_report
from kcs_tl.cli.options import ListModels, kg_and_lm_options, lm_file
from kcs_tl.data.lm import model_lm_blocks
from kcs_tl.files import check_writable, result_folder
from kcs_tl.loading import load_kg, load_model
from kcs_tl.evaluation import evaluate
from kcs_tl.subnetwork import Subnetwork
from kcs_tl.validate import InputValueError


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a saved subnetwork",
                       description="Original vs remaining model vs random subnetworks of the same size.")
    p.add_argument("--model", default="tiny-world", help="model the subnetwork was found on")
    p.add_argument("--list-models", action=ListModels, help="list the names --model accepts and exit")
    p.add_argument("--subnetwork", required=True, help="folder written by discover / demo")
    kg_and_lm_options(p)
    p.add_argument("--block-len", type=int, default=512, help="LM block length (capped at n_ctx)")
    p.add_argument("--n-random", type=int, default=3, help="random subnetworks to compare with (default 3)")
    p.add_argument("--out", help="optional folder for evaluation.csv and summary.html")
    p.add_argument("--overwrite", action="store_true", help="replace files already in --out")
    p.set_defaults(func=command)


def command(args) -> None:
    if args.out:
        if Path(args.out).resolve() in [Path(args.subnetwork).resolve(), *Path(args.subnetwork).resolve().parents]:
            raise InputValueError(f"--out {args.out} holds the --subnetwork being evaluated, and writing would replace "
                                  "it; choose another folder")
        check_writable(args.out, args.overwrite)
    target, control, lm_text = load_kg(args.target), load_kg(args.control), lm_file(args.lm)
    model = load_model(args.model)
    sub = Subnetwork.load(args.subnetwork, model=model)
    blocks = model_lm_blocks(lm_text, model, args.block_len, None)  # the model's BOS: the run's config is not known
    result = evaluate(model, sub, target, control, blocks, n_random=args.n_random)
    print(result)
    print(result.criteria_line())
    if args.out:
        with result_folder(args.out, args.overwrite) as tmp:
            result.table.to_csv(tmp / "evaluation.csv", index=False)
            write_report(tmp / "summary.html", "Subnetwork evaluation", {"Evaluation": result._repr_html_()})
        print(f"wrote {Path(args.out) / 'evaluation.csv'} and {Path(args.out) / 'summary.html'}")
