"""``kcs-tl discover``: search a subnetwork for your own data and model; ``run`` is the pipeline ``demo`` shares."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from kcs_tl.cli.options import ListModels, kg_and_lm_options, lm_file, search_config, search_options
from kcs_tl.data import KnowledgeGraph
from kcs_tl.data.lm import model_lm_blocks
from kcs_tl.files import check_writable
from kcs_tl.loading import load_kg, load_model, write_run
from kcs_tl.evaluation import Evaluation, evaluate
from kcs_tl.discovery import DiscoveryConfig, discover
from kcs_tl.subnetwork import Subnetwork


def run(model, target: KnowledgeGraph, control: KnowledgeGraph, lm_text, cfg: DiscoveryConfig,
        out: Path, overwrite: bool, n_random: int = 3, model_name: str | None = None,
        with_report: bool = True) -> tuple[Subnetwork, Evaluation]:
    """Discover, evaluate against random subnetworks, write everything to ``out``, print the table.

    ``out`` is checked before the search. The found subnetwork and history are
    written (atomically) before the evaluation starts, so a Ctrl-C during the
    evaluation keeps them; the complete folder (with ``report.html`` unless
    ``with_report`` is False) then replaces them in one step.
    """
    check_writable(out, overwrite)
    bos = cfg.bos(model)
    blocks = lm_text if isinstance(lm_text, torch.Tensor) else model_lm_blocks(lm_text, model, cfg.lm_block_len, bos)
    start = time.perf_counter()
    found = discover(model, target, control, blocks, cfg)
    seconds = time.perf_counter() - start
    title = f"Knowledge-critical subnetwork for {target.name or 'TargetKG'}"
    write_run(out, overwrite, found)
    try:
        result = evaluate(model, found.subnetwork, target, control, blocks, n_random=n_random, seed=cfg.seed,
                          prepend_bos=bos)
    except KeyboardInterrupt:
        print(f"interrupted during the evaluation; the subnetwork found is saved in {out / 'subnetwork'} "
              f"(not evaluated: `kcs-tl evaluate --subnetwork {out / 'subnetwork'} ...`)", file=sys.stderr)
        raise
    run_info = {"model": model_name, "search_seconds": seconds, "title": title}
    files = {"target.jsonl": target, "control.jsonl": control, "run.json": json.dumps(run_info, indent=2)}
    report_of = dict(model=model, target=target, control=control, title=title) if with_report else None
    analysis = write_run(out, True, found, result, files, report_of)
    print(result)
    print(f"\nsparsity {result.sparsity:.4%} ({result.n_in_subnetwork:,} weights removed); search "
          f"{seconds:.0f} s, best step {found.best_step} ({found.stopped})")
    print(result.criteria_line(cfg.criteria))
    if analysis is not None:
        print(f"\nthe subnetwork vs activation patching on the TargetKG's facts: {analysis}")
    print(f"wrote {out / 'subnetwork'}, history.csv, evaluation.csv, target.jsonl, control.jsonl, run.json"
          + (f", {out / 'report.html'}" if with_report else ""))
    return found.subnetwork, result


def add_parser(sub) -> None:
    p = sub.add_parser("discover", help="search a subnetwork for your own data and model",
                       description="Discover a knowledge-critical subnetwork, evaluate it, write results.")
    p.add_argument("--model", default="tiny-world", help="built-in model name, a TransformerLens pretrained name "
                   "with local weights, package.module:function or a folder holding a saved Hugging Face model "
                   "(default: tiny-world)")
    p.add_argument("--list-models", action=ListModels, help="list the names --model accepts and exit")
    kg_and_lm_options(p)
    search_options(p, "kcs_out/discover")
    p.set_defaults(func=command)


def command(args) -> None:
    cfg = search_config(args)
    target, control, lm_text = load_kg(args.target), load_kg(args.control), lm_file(args.lm)
    model = load_model(args.model)
    run(model, target, control, lm_text, cfg, Path(args.out), args.overwrite, model_name=args.model,
        with_report=not args.no_report)
