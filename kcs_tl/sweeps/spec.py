"""A sweep spec file (TOML or JSON) read into ``sweep()``'s arguments.

::

    model = "tiny-world"          # or a TransformerLens name, or "package.module:function"
    tasks = ["moutru", "fokar"]   # or "all"; or [{target = "...", control = "...", lm = "..."}]
    seeds = [0, 1, 2]
    out_dir = "kcs_out/sweep"

    [base]                        # DiscoveryConfig fields shared by every variant
    steps = 300

    [configs.weight]              # named settings variants (or a list: [[configs]])
    granularity = "weight"
    [configs.row]
    granularity = "row"

Relative paths (``out_dir``, task files) are read relative to the spec file.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from pathlib import Path

from kcs_tl.files import read_text
from kcs_tl.validate import InputValueError

KEYS = {
    "model": "the model spec (required)",
    "tasks": "the TargetKGs (required)",
    "seeds": "list of seeds (default [0])",
    "configs": "settings variants: a list of tables, or named tables",
    "base": "DiscoveryConfig fields shared by every variant",
    "out_dir": "output folder (default kcs_out/sweep/<spec name>)",
    "n_random": "random subnetworks per evaluation",
    "ray_address": "an existing Ray cluster",
    "num_cpus": "CPUs of a local Ray",
    "cpus_per_run": "CPUs per run",
    "gpus_per_run": "GPUs per run",
    "majority_k": "k of the k-of-n majority subnetwork",
}


def _parse(path: Path) -> dict:
    what = "a sweep spec (TOML or JSON)"
    text = read_text(path, what)
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputValueError(f"{path}: not JSON ({err.msg} at line {err.lineno} column {err.colno}); "
                                  f"expected {what}") from None
    elif path.suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            try:
                import tomli as tomllib
            except ImportError:
                raise InputValueError(f"{path}: reading TOML needs Python >= 3.11 or `pip install tomli`; "
                                      "or write the spec as JSON") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise InputValueError(f"{path}: not TOML ({err}); expected {what}") from None
    else:
        raise InputValueError(f"{path}: a sweep spec is a .toml or .json file, got {path.suffix or 'no suffix'!r}")
    if not isinstance(data, dict):
        raise InputValueError(f"{path}: the spec must be a table/object of settings, got {type(data).__name__}")
    return data


def read_spec(path) -> dict:
    """The keyword arguments of ``kcs_tl.sweep`` that the spec file at ``path`` gives."""
    path = Path(path)
    data = _parse(path)
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        close = [m for u in unknown for m in difflib.get_close_matches(u, KEYS, n=1)]
        hint = f" (did you mean {close}?)" if close else ""
        raise InputValueError(f"{path}: unknown key(s) {unknown}{hint}; valid: {sorted(KEYS)}")
    missing = [k for k in ("model", "tasks") if k not in data]
    if missing:
        raise InputValueError(f"{path}: missing key(s) {missing}; a spec needs model and tasks")
    here = path.resolve().parent
    base = data.pop("base", {})
    if not isinstance(base, Mapping):
        raise InputValueError(f"{path}: base must be a table of DiscoveryConfig fields, got {base!r:.60}")
    configs = data.pop("configs", None)
    if configs is None:
        configs = [dict(base)]
    elif isinstance(configs, Mapping):
        configs = {name: _merged(path, f"configs.{name}", base, c) for name, c in configs.items()}
    elif isinstance(configs, list):
        configs = [_merged(path, f"configs[{i}]", base, c) for i, c in enumerate(configs)]
    else:
        raise InputValueError(f"{path}: configs must be a list of tables or named tables, got {configs!r:.60}")
    tasks = data["tasks"]
    if isinstance(tasks, list):
        data["tasks"] = [_relative_files(here, t) if isinstance(t, Mapping) else t for t in tasks]
    out_dir = Path(data.get("out_dir", Path("kcs_out") / "sweep" / path.stem))
    data["out_dir"] = out_dir if out_dir.is_absolute() or "out_dir" not in data else here / out_dir
    return {"model_spec": data.pop("model"), "configs": configs, **data}


def _merged(path: Path, where: str, base: Mapping, variant) -> dict:
    if not isinstance(variant, Mapping):
        raise InputValueError(f"{path}: {where} must be a table of DiscoveryConfig fields, got {variant!r:.60}")
    return dict(base) | dict(variant)


def _relative_files(here: Path, task: Mapping) -> dict:
    """A task's file paths, relative to the spec's folder (``wordnet:``/``zoo:`` specs stay)."""
    out = dict(task)
    for key in ("target", "control", "lm"):
        value = out.get(key)
        if isinstance(value, str) and not value.startswith(("wordnet:", "zoo:")) and not Path(value).is_absolute():
            out[key] = str(here / value)
    return out
