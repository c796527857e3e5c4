"""The ``kcs-tl`` command: ``demo``, ``discover``, ``evaluate``, ``report``, ``interventions`` and ``sweep``.

``demo`` tells the whole story offline on the built-in model; ``discover`` and
``evaluate`` run the same steps on your own data and any TransformerLens model
whose weights you have locally.

A bad input (argument, file, setting) prints one line naming it and exits with
status 2, without a traceback; Ctrl-C exits with status 130. ``--out`` is
checked before any work, and every output folder is written atomically
(``kcs_tl.files.result_folder``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from kcs_tl.analysis.report import Report, report, write_report
from kcs_tl.data import KnowledgeGraph, lm_blocks, load_wordnet, load_wordnet_control
from kcs_tl.discovery import DiscoveryConfig, discover
from kcs_tl.files import check_writable, existing_result, read_json, result_folder
from kcs_tl.metrics import Evaluation, evaluate
from kcs_tl.subnetwork import Subnetwork

# -- inputs --------------------------------------------------------------------


def load_model(name: str):
    """A built-in zoo model by name, else ``HookedTransformer.from_pretrained`` (TransformerLens 3.x) or
    ``TransformerBridge.boot_transformers`` (4.x); either needs local weights."""
    from kcs_tl import zoo

    if name in zoo.available():
        return zoo.load(name).model
    try:
        from transformer_lens import HookedTransformer
        from transformer_lens.loading_from_pretrained import get_official_model_name
    except ImportError:  # TransformerLens 4.x: the bridge around the Hugging Face model
        from kcs_tl.adapters.bridge import TransformerBridge

        HookedTransformer, get_official_model_name = None, lambda name: name
    try:
        get_official_model_name(name)
    except ValueError:
        raise ValueError(f"--model {name!r} is unknown: neither a built-in model {zoo.available()} nor a "
                         "TransformerLens model name; `kcs-tl discover --list-models` lists them") from None
    try:
        if HookedTransformer is None:
            return TransformerBridge.boot_transformers(name)
        return HookedTransformer.from_pretrained(name)
    except Exception as err:  # offline, missing weights: say what was tried, in one line
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ValueError(f"--model {name!r}: could not load its weights ({reason}); they must be available "
                         "locally (e.g. in the Hugging Face cache)") from None


class _ListModels(argparse.Action):
    """``--list-models``: print the names ``--model`` accepts, then exit."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from kcs_tl import zoo

        print("built-in (offline):", *zoo.available(), sep="\n  ")
        try:
            from transformer_lens.loading_from_pretrained import OFFICIAL_MODEL_NAMES
        except ImportError:  # TransformerLens 4.x
            print("or a Hugging Face model name TransformerBridge.boot_transformers supports (weights local)")
        else:
            print("TransformerLens (weights must be available locally):", *OFFICIAL_MODEL_NAMES, sep="\n  ")
        parser.exit()


def load_kg(spec: str) -> KnowledgeGraph:
    """``wordnet:ROOT``, ``wordnet:control``, ``zoo:ROOT`` (a built-in IsA subtree) or a .jsonl path."""
    kind, _, rest = spec.partition(":")
    if kind == "wordnet":
        return load_wordnet_control() if rest == "control" else load_wordnet(rest)
    if kind == "zoo":
        from kcs_tl import zoo

        return zoo.load().target_kg(rest)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"{spec!r} is neither a file nor wordnet:ROOT, wordnet:control or zoo:ROOT")
    return KnowledgeGraph.load(path)


def config_from(args) -> DiscoveryConfig:
    """The settings of ``--config`` (a JSON file), then ``--steps``/``--seed``/``--device``; errors name the source."""
    data = read_json(args.config, "a JSON object of DiscoveryConfig fields") if args.config else {}
    overrides = {k: v for k, v in {"steps": args.steps, "seed": args.seed, "device": args.device}.items()
                 if v is not None}
    try:
        DiscoveryConfig.from_json(data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"--config {args.config}: {err}") from None
    return DiscoveryConfig.from_json(data | overrides)


# -- the pipeline --------------------------------------------------------------


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
    blocks = lm_text if isinstance(lm_text, torch.Tensor) else lm_blocks(
        lm_text, model.tokenizer, min(cfg.lm_block_len, model.cfg.n_ctx), prepend_bos=bos)
    start = time.perf_counter()
    found = discover(model, target, control, blocks, cfg)
    seconds = time.perf_counter() - start
    title = f"Knowledge-critical subnetwork for {target.name or 'TargetKG'}"
    write_result(out, overwrite, found)
    try:
        result = evaluate(model, found.subnetwork, target, control, blocks, n_random=n_random, seed=cfg.seed,
                          prepend_bos=bos)
    except KeyboardInterrupt:
        print(f"interrupted during the evaluation; the subnetwork found is saved in {out / 'subnetwork'} "
              f"(not evaluated: `kcs-tl evaluate --subnetwork {out / 'subnetwork'} ...`)", file=sys.stderr)
        raise
    run_info = {"model": model_name, "search_seconds": seconds, "title": title}
    analysis = write_result(out, True, found, result, (model, target, control, run_info), with_report)
    print(result)
    print(f"\nsparsity {result.sparsity:.4%} ({result.n_in_subnetwork:,} weights removed); search "
          f"{seconds:.0f} s, best step {found.best_step} ({found.stopped})")
    print(result.criteria_line(cfg.criteria))
    if analysis is not None:
        print(f"\nthe subnetwork vs activation patching on the TargetKG's facts: {analysis}")
    print(f"wrote {out / 'subnetwork'}, history.csv, evaluation.csv, target.jsonl, control.jsonl, run.json"
          + (f", {out / 'report.html'}" if with_report else ""))
    return found.subnetwork, result


def write_result(out: Path, overwrite: bool, found, result: Evaluation | None = None,
                 analysed: tuple | None = None, with_report: bool = True) -> Report | None:
    """One result folder, written atomically: subnetwork and history; with the evaluation, also
    the evaluation table; with ``analysed`` = (model, target, control, run info), the graphs and
    ``run.json`` (what ``kcs-tl report`` reads) and, ``with_report``, the HTML report."""
    with result_folder(out, overwrite) as tmp:
        found.subnetwork.save(tmp / "subnetwork")
        found.history.to_csv(tmp / "history.csv", index=False)
        if result is not None:
            result.table.to_csv(tmp / "evaluation.csv", index=False)
        if analysed is not None:
            model, target, control, info = analysed
            target.save(tmp / "target.jsonl")
            control.save(tmp / "control.jsonl")
            (tmp / "run.json").write_text(json.dumps(info, indent=2))
        done = None
        if analysed is not None and with_report:
            done = report(model, found.subnetwork, target, tmp / "report.html", control=control,
                          evaluation=result, title=info["title"])
    if done is not None:
        done.path = out / "report.html"  # where the folder now is
    return done


# -- commands ------------------------------------------------------------------


def cmd_demo(args) -> None:
    from kcs_tl import zoo
    from kcs_tl.zoo.task import forgetting_task

    check_writable(args.out, args.overwrite)
    cfg = config_from(args)
    z = zoo.load("tiny-world")
    task = forgetting_task(z, args.root or 0)
    print(f"built-in model tiny-world: {z.model.cfg.n_layers} layers, d_model {z.model.cfg.d_model}; "
          f"TargetKG: the {len(task.target)} IsA facts under {task.root!r} (e.g. {task.target[0]}); "
          f"ControlKG: {len(task.control)} other facts; ControlLM: {len(task.lm)} blocks of narrative text")
    run(z.model, task.target, task.control, task.lm, cfg, Path(args.out), args.overwrite, model_name="tiny-world",
        with_report=not args.no_report)


def _lm_file(spec: str) -> Path:
    lm_text = Path(spec)
    if not lm_text.is_file():
        raise FileNotFoundError(f"--lm {spec!r} is not a text file")
    return lm_text


def cmd_discover(args) -> None:
    check_writable(args.out, args.overwrite)
    cfg = config_from(args)
    target, control, lm_text = load_kg(args.target), load_kg(args.control), _lm_file(args.lm)
    model = load_model(args.model)
    run(model, target, control, lm_text, cfg, Path(args.out), args.overwrite, model_name=args.model,
        with_report=not args.no_report)


def cmd_evaluate(args) -> None:
    if args.out:
        if Path(args.out).resolve() in [Path(args.subnetwork).resolve(), *Path(args.subnetwork).resolve().parents]:
            raise ValueError(f"--out {args.out} holds the --subnetwork being evaluated, and writing would replace "
                             "it; choose another folder")
        check_writable(args.out, args.overwrite)
    target, control, lm_text = load_kg(args.target), load_kg(args.control), _lm_file(args.lm)
    model = load_model(args.model)
    sub = Subnetwork.load(args.subnetwork, model=model)
    blocks = lm_blocks(lm_text, model.tokenizer, min(args.block_len, model.cfg.n_ctx),
                       prepend_bos=model.cfg.default_prepend_bos)
    result = evaluate(model, sub, target, control, blocks, n_random=args.n_random)
    print(result)
    print(result.criteria_line())
    if args.out:
        with result_folder(args.out, args.overwrite) as tmp:
            result.table.to_csv(tmp / "evaluation.csv", index=False)
            write_report(tmp / "summary.html", "Subnetwork evaluation", {"Evaluation": result._repr_html_()})
        print(f"wrote {Path(args.out) / 'evaluation.csv'} and {Path(args.out) / 'summary.html'}")


def cmd_report(args) -> None:
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


def _search_options(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument("--out", default=default_out, help=f"output folder (default: {default_out})")
    p.add_argument("--overwrite", action="store_true", help="replace a result already in --out")
    p.add_argument("--config", help="JSON file of DiscoveryConfig fields (see kcs_tl.DiscoveryConfig)")
    p.add_argument("--steps", type=int, help="override the number of search steps")
    p.add_argument("--seed", type=int, help="override the random seed")
    p.add_argument("--device", help="cpu, cuda or auto (default: auto)")
    p.add_argument("--no-report", action="store_true", help="skip report.html (its patching takes a while)")


KG_HELP = "a KnowledgeGraph .jsonl file, wordnet:ROOT, wordnet:control or zoo:ROOT"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kcs-tl", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True,
                           metavar="{demo,discover,evaluate,report,interventions,sweep}")

    demo = sub.add_parser("demo", help="the whole story on the built-in model, offline, on CPU",
                          description="Pick an IsA subtree of the built-in world as TargetKG, discover its "
                          "knowledge-critical subnetwork, evaluate it against random subnetworks of the same "
                          "size, print the table and write the subnetwork and an HTML report.")
    demo.add_argument("--root", help="IsA subtree root to forget (default: the first of the world's target roots)")
    _search_options(demo, "kcs_out/demo")
    demo.set_defaults(func=cmd_demo)

    disc = sub.add_parser("discover", help="search a subnetwork for your own data and model",
                          description="Discover a knowledge-critical subnetwork, evaluate it, write results.")
    disc.add_argument("--model", default="tiny-world", help="built-in model name or a TransformerLens "
                      "pretrained name with local weights (default: tiny-world)")
    disc.add_argument("--list-models", action=_ListModels, help="list the names --model accepts and exit")
    disc.add_argument("--target", required=True, help=f"TargetKG: {KG_HELP}")
    disc.add_argument("--control", required=True, help=f"ControlKG: {KG_HELP}")
    disc.add_argument("--lm", required=True, help="ControlLM text file, one document per line")
    _search_options(disc, "kcs_out/discover")
    disc.set_defaults(func=cmd_discover)

    ev = sub.add_parser("evaluate", help="evaluate a saved subnetwork",
                        description="Original vs remaining model vs random subnetworks of the same size.")
    ev.add_argument("--model", default="tiny-world", help="model the subnetwork was found on")
    ev.add_argument("--list-models", action=_ListModels, help="list the names --model accepts and exit")
    ev.add_argument("--subnetwork", required=True, help="folder written by discover / demo")
    ev.add_argument("--target", required=True, help=f"TargetKG: {KG_HELP}")
    ev.add_argument("--control", required=True, help=f"ControlKG: {KG_HELP}")
    ev.add_argument("--lm", required=True, help="ControlLM text file, one document per line")
    ev.add_argument("--block-len", type=int, default=512, help="LM block length (capped at n_ctx)")
    ev.add_argument("--n-random", type=int, default=3, help="random subnetworks to compare with (default 3)")
    ev.add_argument("--out", help="optional folder for evaluation.csv and summary.html")
    ev.add_argument("--overwrite", action="store_true", help="replace files already in --out")
    ev.set_defaults(func=cmd_evaluate)

    rep = sub.add_parser("report", help="write the HTML report of a run folder",
                         description="Components, activation patching on the TargetKG's facts, the comparison "
                         "of the two beside random subnetworks, circuitsvis views: one self-contained HTML file.")
    rep.add_argument("run_dir", help="a folder written by demo or discover")
    rep.add_argument("--model", help="model the subnetwork was found on (default: the run's, else tiny-world)")
    rep.add_argument("--target", help=f"TargetKG (default: the run's target.jsonl): {KG_HELP}")
    rep.add_argument("--control", help=f"ControlKG (default: the run's control.jsonl): {KG_HELP}")
    rep.add_argument("--n-random", type=int, default=20, help="random subnetworks to compare with (default 20)")
    rep.add_argument("--out", help="HTML file to write (default: RUN_DIR/report.html)")
    rep.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    rep.set_defaults(func=cmd_report)

    from kcs_tl.interventions import command as interventions_command

    interventions_command.add_parser(sub)

    _sweep_parser(sub)
    return p


def cmd_sweep(args) -> None:
    from kcs_tl.sweeps import sweep
    from kcs_tl.sweeps.spec import read_spec

    spec = read_spec(args.spec)
    overrides = {"out_dir": args.out, "ray_address": args.address, "num_cpus": args.num_cpus}
    spec |= {k: v for k, v in overrides.items() if v is not None}
    result = sweep(**spec, executor="sequential" if args.sequential else "auto")
    print(result)
    print(f"wrote {', '.join(str(f) for f in result.files)} and one folder per run in {result.out_dir}")


def _sweep_parser(sub) -> None:
    sw = sub.add_parser("sweep", help="a grid of discoveries (TargetKGs x settings x seeds), on Ray",
                        description="Run every discover + evaluate of the grid a spec file describes, skipping "
                        "runs already finished in the output folder; print the per-run table and the seed "
                        "stability table (Jaccard between seeds vs chance, intersection and majority evaluated).")
    sw.add_argument("spec", help="a .toml or .json file (see kcs_tl.sweeps.spec)")
    sw.add_argument("--out", help="output folder (default: the spec's out_dir, else kcs_out/sweep/<spec name>)")
    sw.add_argument("--address", help="an existing Ray cluster (default: Ray started locally)")
    sw.add_argument("--num-cpus", type=int, help="CPUs of a locally started Ray (default: all)")
    sw.add_argument("--sequential", action="store_true", help="run in this process, one run after the other")
    sw.set_defaults(func=cmd_sweep)


USER_ERRORS = (ValueError, TypeError, OSError)
"""What a bad argument, file or setting raises; anything else is a bug and keeps its traceback."""


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print(f"kcs-tl {args.command}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except USER_ERRORS as err:
        print(f"kcs-tl {args.command}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    sys.exit(main())
