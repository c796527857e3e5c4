"""The ``kcs-tl`` command: ``demo``, ``discover`` and ``evaluate``.

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
import sys
import time
from pathlib import Path

import torch

from kcs_tl.analysis.report import write_report
from kcs_tl.data import KnowledgeGraph, lm_blocks, load_wordnet, load_wordnet_control
from kcs_tl.files import check_writable, read_json, result_folder
from kcs_tl.metrics import Evaluation, evaluate
from kcs_tl.search import DiscoveryConfig, discover
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
        out: Path, overwrite: bool, n_random: int = 3) -> tuple[Subnetwork, Evaluation]:
    """Discover, evaluate against random subnetworks, write everything to ``out``, print the table.

    ``out`` is checked before the search. The found subnetwork and history are
    written (atomically) before the evaluation starts, so a Ctrl-C during the
    evaluation keeps them; the complete folder then replaces them in one step.
    """
    check_writable(out, overwrite)
    blocks = lm_text if isinstance(lm_text, torch.Tensor) else lm_blocks(
        lm_text, model.tokenizer, min(cfg.lm_block_len, model.cfg.n_ctx))
    start = time.perf_counter()
    found = discover(model, target, control, blocks, cfg)
    seconds = time.perf_counter() - start
    title = f"Knowledge-critical subnetwork for {target.name or 'TargetKG'}"
    write_result(out, overwrite, title, found, seconds)
    try:
        result = evaluate(model, found.subnetwork, target, control, blocks, n_random=n_random, seed=cfg.seed)
    except KeyboardInterrupt:
        print(f"interrupted during the evaluation; the subnetwork found is saved in {out / 'subnetwork'} "
              f"(not evaluated: `kcs-tl evaluate --subnetwork {out / 'subnetwork'} ...`)", file=sys.stderr)
        raise
    write_result(out, True, title, found, seconds, result)
    print(result)
    print(f"\nsparsity {result.sparsity:.4%} ({result.n_in_subnetwork:,} weights removed); search "
          f"{seconds:.0f} s, best step {found.best_step} ({found.stopped})")
    print(result.criteria_line(cfg.criteria))
    print(f"wrote {out / 'subnetwork'}, {out / 'summary.html'}, history.csv, evaluation.csv")
    return found.subnetwork, result


def write_result(out: Path, overwrite: bool, title: str, found, seconds: float,
                 result: Evaluation | None = None) -> None:
    """One result folder, written atomically: subnetwork, history, summary, and the evaluation when given."""
    sections = {"Search": f"<p>{found!r}; {seconds:.0f} s</p>"}
    if result is not None:
        sections["Evaluation (original vs remaining vs random subnetworks of the same size)"] = result._repr_html_()
    sections |= {"Subnetwork": found.subnetwork._repr_html_(),
                 "Sparsity per layer": found.subnetwork.stats("layer").to_html(index=False)}
    with result_folder(out, overwrite) as tmp:
        found.subnetwork.save(tmp / "subnetwork")
        found.history.to_csv(tmp / "history.csv", index=False)
        if result is not None:
            result.table.to_csv(tmp / "evaluation.csv", index=False)
        write_report(tmp / "summary.html", title, sections)


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
    run(z.model, task.target, task.control, task.lm, cfg, Path(args.out), args.overwrite)


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
    run(model, target, control, lm_text, cfg, Path(args.out), args.overwrite)


def cmd_evaluate(args) -> None:
    if args.out:
        if Path(args.out).resolve() in [Path(args.subnetwork).resolve(), *Path(args.subnetwork).resolve().parents]:
            raise ValueError(f"--out {args.out} holds the --subnetwork being evaluated, and writing would replace "
                             "it; choose another folder")
        check_writable(args.out, args.overwrite)
    target, control, lm_text = load_kg(args.target), load_kg(args.control), _lm_file(args.lm)
    model = load_model(args.model)
    sub = Subnetwork.load(args.subnetwork, model=model)
    blocks = lm_blocks(lm_text, model.tokenizer, min(args.block_len, model.cfg.n_ctx))
    result = evaluate(model, sub, target, control, blocks, n_random=args.n_random)
    print(result)
    print(result.criteria_line())
    if args.out:
        with result_folder(args.out, args.overwrite) as tmp:
            result.table.to_csv(tmp / "evaluation.csv", index=False)
            write_report(tmp / "summary.html", "Subnetwork evaluation", {"Evaluation": result._repr_html_()})
        print(f"wrote {Path(args.out) / 'evaluation.csv'} and {Path(args.out) / 'summary.html'}")


def _search_options(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument("--out", default=default_out, help=f"output folder (default: {default_out})")
    p.add_argument("--overwrite", action="store_true", help="replace a result already in --out")
    p.add_argument("--config", help="JSON file of DiscoveryConfig fields (see kcs_tl.DiscoveryConfig)")
    p.add_argument("--steps", type=int, help="override the number of search steps")
    p.add_argument("--seed", type=int, help="override the random seed")
    p.add_argument("--device", help="cpu, cuda or auto (default: auto)")


KG_HELP = "a KnowledgeGraph .jsonl file, wordnet:ROOT, wordnet:control or zoo:ROOT"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kcs-tl", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="{demo,discover,evaluate}")

    demo = sub.add_parser("demo", help="the whole story on the built-in model, offline, on CPU",
                          description="Pick an IsA subtree of the built-in world as TargetKG, discover its "
                          "knowledge-critical subnetwork, evaluate it against random subnetworks of the same "
                          "size, print the table and write the subnetwork and an HTML summary.")
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
    return p


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
