"""Arguments several verbs share: search settings, ``--list-models``, the KG and LM inputs."""

from __future__ import annotations

import argparse
from pathlib import Path

from kcs_tl.files import check_writable, read_json
from kcs_tl.loading import model_names
from kcs_tl.discovery import DiscoveryConfig
from kcs_tl.validate import InputError

KG_HELP = "a KnowledgeGraph .jsonl file, wordnet:ROOT, wordnet:control or zoo:ROOT"


class ListModels(argparse.Action):
    """``--list-models``: print the names ``--model`` accepts, then exit."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(model_names())
        parser.exit()


def search_options(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument("--out", default=default_out, help=f"output folder (default: {default_out})")
    p.add_argument("--overwrite", action="store_true", help="replace a result already in --out")
    p.add_argument("--config", help="JSON file of DiscoveryConfig fields (see kcs_tl.DiscoveryConfig)")
    p.add_argument("--steps", type=int, help="override the number of search steps")
    p.add_argument("--seed", type=int, help="override the random seed")
    p.add_argument("--device", help="cpu, cuda or auto (default: auto)")
    p.add_argument("--no-report", action="store_true", help="skip report.html (its patching takes a while)")


def search_config(args) -> DiscoveryConfig:
    """``--out`` checked, then the settings of ``--config`` (a JSON file) and ``--steps``/``--seed``/``--device``:
    a bad one stops the command before any loading, naming its source."""
    check_writable(args.out, args.overwrite)
    data = read_json(args.config, "a JSON object of DiscoveryConfig fields") if args.config else {}
    overrides = {k: v for k, v in {"steps": args.steps, "seed": args.seed, "device": args.device}.items()
                 if v is not None}
    try:
        DiscoveryConfig.from_json(data)
    except InputError as err:
        raise type(err)(f"--config {args.config}: {err}") from None
    return DiscoveryConfig.from_json(data | overrides)


def kg_and_lm_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, help=f"TargetKG: {KG_HELP}")
    p.add_argument("--control", required=True, help=f"ControlKG: {KG_HELP}")
    p.add_argument("--lm", required=True, help="ControlLM text file, one document per line")


def lm_file(spec: str) -> Path:
    """``--lm``, checked before any model is loaded."""
    lm_text = Path(spec)
    if not lm_text.is_file():
        raise FileNotFoundError(f"--lm {spec!r} is not a text file")
    return lm_text
