"""The ``kcs-tl`` command: ``demo``, ``discover`` and ``evaluate``.

``demo`` tells the whole story offline on the built-in model; ``discover`` and
``evaluate`` run the same steps on your own data and any TransformerLens model
whose weights you have locally.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from kcs_tl.analysis.report import write_report
from kcs_tl.data import KnowledgeGraph, lm_blocks, load_wordnet, load_wordnet_control
from kcs_tl.metrics import Evaluation, evaluate
from kcs_tl.search import DiscoveryConfig, discover
from kcs_tl.subnetwork import Subnetwork

# -- inputs --------------------------------------------------------------------


def load_model(name: str):
    """A built-in zoo model by name, else ``HookedTransformer.from_pretrained`` (needs local weights)."""
    from kcs_tl import zoo

    if name in zoo.available():
        return zoo.load(name).model
    from transformer_lens import HookedTransformer

    try:
        return HookedTransformer.from_pretrained(name)
    except Exception as err:  # offline, unknown name, missing weights: say what was tried
        raise SystemExit(f"kcs-tl: could not load model {name!r} ({err}). Built-in models: "
                         f"{zoo.available()}; other names need TransformerLens weights available locally.")


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
        raise SystemExit(f"kcs-tl: {spec!r} is neither a file nor wordnet:ROOT, wordnet:control or zoo:ROOT")
    return KnowledgeGraph.load(path)


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse, before any work, an output folder that already holds files."""
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SystemExit(f"kcs-tl: {out} already holds a result; choose another --out or pass --overwrite")


def config_from(args) -> DiscoveryConfig:
    data = json.loads(Path(args.config).read_text()) if args.config else {}
    cfg = DiscoveryConfig.from_json(data)
    overrides = {k: v for k, v in {"steps": args.steps, "seed": args.seed, "device": args.device}.items()
                 if v is not None}
    return DiscoveryConfig.from_json(cfg.to_json() | overrides)


# -- the pipeline --------------------------------------------------------------


def run(model, target: KnowledgeGraph, control: KnowledgeGraph, lm_text, cfg: DiscoveryConfig,
        out: Path, overwrite: bool, n_random: int = 3) -> tuple[Subnetwork, Evaluation]:
    """Discover, evaluate against random subnetworks, write everything to ``out``, print the table."""
    check_out(out, overwrite)
    blocks = lm_text if isinstance(lm_text, torch.Tensor) else lm_blocks(
        lm_text, model.tokenizer, min(cfg.lm_block_len, model.cfg.n_ctx))
    start = time.perf_counter()
    found = discover(model, target, control, blocks, cfg)
    seconds = time.perf_counter() - start
    result = evaluate(model, found.subnetwork, target, control, blocks, n_random=n_random, seed=cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    found.subnetwork.save(out / "subnetwork", overwrite=overwrite)
    found.history.to_csv(out / "history.csv", index=False)
    result.table.to_csv(out / "evaluation.csv", index=False)
    write_report(out / "summary.html", f"Knowledge-critical subnetwork for {target.name or 'TargetKG'}", {
        "Search": f"<p>{found!r}; {seconds:.0f} s</p>",
        "Evaluation (original vs remaining vs random subnetworks of the same size)": result._repr_html_(),
        "Subnetwork": found.subnetwork._repr_html_(),
        "Sparsity per layer": found.subnetwork.stats("layer").to_html(index=False),
    })
    print(result)
    print(f"\nsparsity {result.sparsity:.4%} ({result.n_in_subnetwork:,} weights removed); search "
          f"{seconds:.0f} s, best step {found.best_step} ({found.stopped})")
    print(result.criteria_line(cfg.criteria))
    print(f"wrote {out / 'subnetwork'}, {out / 'summary.html'}, history.csv, evaluation.csv")
    return found.subnetwork, result


# -- commands ------------------------------------------------------------------


def cmd_demo(args) -> None:
    from kcs_tl import zoo
    from kcs_tl.zoo.task import forgetting_task

    z = zoo.load("tiny-world")
    task = forgetting_task(z, args.root or 0)
    print(f"built-in model tiny-world: {z.model.cfg.n_layers} layers, d_model {z.model.cfg.d_model}; "
          f"TargetKG: the {len(task.target)} IsA facts under {task.root!r} (e.g. {task.target[0]}); "
          f"ControlKG: {len(task.control)} other facts; ControlLM: {len(task.lm)} blocks of narrative text")
    run(z.model, task.target, task.control, task.lm, config_from(args), Path(args.out), args.overwrite)


def cmd_discover(args) -> None:
    model = load_model(args.model)
    target = load_kg(args.target)
    control = load_kg(args.control)
    lm_text = Path(args.lm)
    if not lm_text.is_file():
        raise SystemExit(f"kcs-tl: --lm {args.lm!r} is not a text file")
    run(model, target, control, lm_text, config_from(args), Path(args.out), args.overwrite)


def cmd_evaluate(args) -> None:
    model = load_model(args.model)
    sub = Subnetwork.load(args.subnetwork, model=model)
    target, control = load_kg(args.target), load_kg(args.control)
    blocks = lm_blocks(Path(args.lm), model.tokenizer, min(args.block_len, model.cfg.n_ctx))
    result = evaluate(model, sub, target, control, blocks, n_random=args.n_random)
    print(result)
    print(result.criteria_line())
    if args.out:
        out = Path(args.out)
        check_out(out, args.overwrite)
        out.mkdir(parents=True, exist_ok=True)
        result.table.to_csv(out / "evaluation.csv", index=False)
        write_report(out / "summary.html", "Subnetwork evaluation", {"Evaluation": result._repr_html_()})
        print(f"wrote {out / 'evaluation.csv'} and {out / 'summary.html'}")


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
    disc.add_argument("--target", required=True, help=f"TargetKG: {KG_HELP}")
    disc.add_argument("--control", required=True, help=f"ControlKG: {KG_HELP}")
    disc.add_argument("--lm", required=True, help="ControlLM text file, one document per line")
    _search_options(disc, "kcs_out/discover")
    disc.set_defaults(func=cmd_discover)

    ev = sub.add_parser("evaluate", help="evaluate a saved subnetwork",
                        description="Original vs remaining model vs random subnetworks of the same size.")
    ev.add_argument("--model", default="tiny-world", help="model the subnetwork was found on")
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


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        raise SystemExit(f"kcs-tl {args.command}: {err}")


if __name__ == "__main__":
    sys.exit(main())
