"""The grid of a sweep: model x TargetKGs x settings x seeds, one ``Run`` each, with a stable id.

A run's id is a hash of what defines it (model spec, task spec, every
``DiscoveryConfig`` field including the seed, the evaluation's settings), so the
same grid started again finds the same folders, and a changed setting makes a
new run instead of reusing an old result. Display-only things (the settings'
label, ``progress``) are not part of the hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kcs_tl import validate
from kcs_tl.discovery import DiscoveryConfig
from kcs_tl.validate import InputError, InputTypeError, InputValueError

FORMAT = "kcs_tl.sweep.run/1"
_NOT_DEFINING = ("progress",)  # config fields that do not change a run's result


@dataclass(frozen=True)
class Run:
    """One discover + evaluate of the grid; plain data, so it travels to workers as JSON."""

    model: str
    task: dict  # {"zoo_root": ROOT[, "n_control", "n_blocks"]} or {"target": KG, "control": KG, "lm": FILE}
    task_name: str
    settings: str  # the label of the config variant
    seed: int
    config: dict  # DiscoveryConfig.to_json(), seed included
    n_random: int

    def definition(self, with_seed: bool = True) -> dict:
        config = {k: v for k, v in self.config.items() if k not in _NOT_DEFINING + (() if with_seed else ("seed",))}
        return {"format": FORMAT, "model": self.model, "task": self.task, "config": config,
                "n_random": self.n_random}

    @property
    def run_id(self) -> str:
        """``<task>-s<seed>-<hash>``: readable, and unique to what defines the run."""
        return f"{_slug(self.task_name)}-s{self.seed}-{_digest(self.definition())}"

    @property
    def group(self) -> str:
        """Runs that differ only by seed share a group (seed stability compares them)."""
        return _digest(self.definition(with_seed=False))

    def discovery_config(self) -> DiscoveryConfig:
        return DiscoveryConfig.from_json(self.config)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Run":
        return cls(**data)


def _digest(data: dict) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", text).strip("_.")[:40] or "task"


# -- what each axis accepts ----------------------------------------------------------


def model_spec(value) -> str:
    """A zoo name, a TransformerLens model name, or ``package.module:function`` returning a model."""
    if not isinstance(value, str) or not value.strip():
        raise InputTypeError("model_spec must be a string: a built-in model name (e.g. 'tiny-world'), a "
                             f"TransformerLens model name (e.g. 'gpt2') or 'package.module:function', got {validate.given(value)}")
    if value.count(":") > 1 or value.startswith(":") or value.endswith(":"):
        raise InputValueError(f"model_spec {value!r}: a loader is written 'package.module:function'")
    return value


def _zoo_roots(model: str) -> list[str] | None:
    from kcs_tl import zoo

    return zoo.load(model).target_roots if model in zoo.available() else None


ZOO_TASK_OPTIONS = ("n_control", "n_blocks")
"""Options of a built-in task (``kcs_tl.zoo.task.forgetting_task``): ControlKG triplets, ControlLM blocks."""


def _zoo_task(where: str, spec, roots: list[str] | None) -> tuple[dict, str]:
    """A built-in TargetKG: a root name or index, or ``{"root": ..., "n_control": ..., "n_blocks": ...}``."""
    options = {}
    if isinstance(spec, Mapping):
        unknown = sorted(set(spec) - {"root", *ZOO_TASK_OPTIONS})
        if unknown:
            raise InputValueError(f"{where} has unknown key(s) {unknown}; a built-in task takes root and optionally "
                                  f"{list(ZOO_TASK_OPTIONS)}")
        options = {k: validate.integer(f"{where}.{k}", spec[k], 2) for k in ZOO_TASK_OPTIONS if k in spec}
        spec = spec["root"]
    if roots is None:
        raise InputValueError(f"{where} = {spec!r} names a built-in TargetKG, but the model is not a built-in "
                              "one; give {'target': ..., 'control': ..., 'lm': ...} instead")
    if isinstance(spec, int) and not isinstance(spec, bool):
        if not 0 <= spec < len(roots):
            raise InputValueError(f"{where} = {spec}: the built-in model has TargetKGs 0..{len(roots) - 1}")
        spec = roots[spec]
    root = spec.removeprefix("zoo:") if isinstance(spec, str) else spec
    if root not in roots:
        raise InputValueError(f"{where} = {spec!r} is not a TargetKG of the built-in model; valid: {roots}")
    return {"zoo_root": root, **options}, root


def _task(i: int, spec, roots: list[str] | None) -> tuple[dict, str]:
    """One task spec, normalised, and its name."""
    where = f"tasks[{i}]"
    if isinstance(spec, (str, int)) or (isinstance(spec, Mapping) and "root" in spec):
        return _zoo_task(where, spec, roots)
    if isinstance(spec, Mapping):
        keys = {"target", "control", "lm", "name"}
        unknown, missing = sorted(set(spec) - keys), sorted({"target", "control", "lm"} - set(spec))
        if unknown or missing:
            raise InputValueError(f"{where} needs the keys target, control and lm (optional: name); "
                                  f"missing {missing}, unknown {unknown}")
        task = {}
        for key in ("target", "control", "lm"):
            value = validate.path(f"{where}.{key}", spec[key])
            is_file = Path(value).is_file()
            if key == "lm" or not value.startswith(("wordnet:", "zoo:")):
                if not is_file:
                    raise FileNotFoundError(f"{where}.{key}: {value} is not a file")
                value = str(Path(value).resolve())  # workers may run elsewhere
            task[key] = value
        name = spec.get("name") or Path(task["target"].split(":")[-1]).stem
        return task, validate.path(f"{where}.name", name)
    raise InputTypeError(f"{where} must be a built-in TargetKG name or index, or a dict with target, control "
                         f"and lm, got {validate.given(spec)}")


def _configs(configs) -> list[tuple[str, DiscoveryConfig]]:
    """(label, config) per settings variant; a bare list gets labels from its differences to the defaults."""
    if configs is None:
        return [("default", DiscoveryConfig())]
    if isinstance(configs, DiscoveryConfig) or (isinstance(configs, Mapping) and _one_config(configs)):
        configs = [configs]  # one variant
    if isinstance(configs, Mapping):
        named = list(configs.items())
    elif validate._collection(configs):
        named = [(None, c) for c in configs]
    else:
        raise InputTypeError("configs must be a list of DiscoveryConfigs or dicts of DiscoveryConfig fields, or a "
                             f"dict of name -> settings, got {validate.given(configs)}")
    out = []
    for i, (name, c) in enumerate(named):
        where = f"configs[{name!r}]" if name is not None else f"configs[{i}]"
        if isinstance(c, DiscoveryConfig):
            cfg = dataclasses.replace(c)
        elif isinstance(c, Mapping):
            try:
                cfg = DiscoveryConfig.from_json(dict(c))
            except InputError as err:
                raise type(err)(f"{where}: {err}") from None
        else:
            raise InputTypeError(f"{where} must be a DiscoveryConfig or a dict of its fields, got {validate.given(c)}")
        if cfg.checkpoint_every:
            raise InputValueError(f"{where}: checkpoint_every would make every run of the grid write one "
                                  "checkpoint_dir; a sweep restarts unfinished runs from the start, so leave it at 0")
        out.append((str(name) if name is not None else _label(cfg), cfg))
    if not out:
        raise InputValueError("configs is empty; give at least one settings variant (or None for the defaults)")
    return out


_DICT_FIELDS = {"criteria", "relaxation_options"}  # DiscoveryConfig fields whose values are dicts


def _one_config(configs: Mapping) -> bool:
    """Whether a dict is one variant's fields rather than name -> variant.

    Fields only, and either a plain value among them (``{"steps": 20}``) or only the
    fields that hold dicts (``{"criteria": {...}}``); ``{"weights": {}, "rows": {...}}`` is named.
    """
    fields = {f.name for f in dataclasses.fields(DiscoveryConfig)}
    if not configs or not set(configs) <= fields:
        return False
    plain = any(not isinstance(v, (Mapping, DiscoveryConfig)) for v in configs.values())
    return plain or set(configs) <= _DICT_FIELDS


def _label(cfg: DiscoveryConfig) -> str:
    """The settings that differ from the defaults, as ``key=value,...`` (``default`` when none)."""
    base, mine = DiscoveryConfig().to_json(), cfg.to_json()
    diff = [f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in mine.items()
            if base[k] != v and k not in ("seed",) + _NOT_DEFINING]
    return ",".join(diff) or "default"


def _seeds(seeds) -> list[int]:
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not validate._collection(seeds):
        raise InputTypeError(f"seeds must be a list of ints >= 0, got {validate.given(seeds)}")
    seeds = [validate.integer(f"seeds[{i}]", s, 0) for i, s in enumerate(seeds)]
    if not seeds:
        raise InputValueError("seeds is empty; give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise InputValueError(f"seeds holds duplicates: {seeds}")
    return seeds


def expand(model, tasks, configs=None, seeds=(0,), n_random: int = 3) -> list[Run]:
    """Every run of the grid, tasks outermost, then settings, then seeds.

    ``tasks``: for a built-in model its TargetKG names or indices (``"all"`` for
    every one), or ``{"root": ..., "n_control": ..., "n_blocks": ...}`` for a smaller
    ControlKG / ControlLM than ``forgetting_task``'s defaults; for any model, dicts ``{"target": KG, "control": KG, "lm": FILE}``
    with KGs as ``kcs-tl discover`` reads them (a .jsonl file, ``wordnet:ROOT``,
    ``wordnet:control``). ``configs``: ``None`` (the defaults), a list of
    ``DiscoveryConfig``s or dicts of its fields, or a dict of name -> those.
    """
    model = model_spec(model)
    roots = _zoo_roots(model)
    if tasks == "all":
        if roots is None:
            raise InputValueError("tasks='all' needs a built-in model (its TargetKGs); give a list of tasks")
        tasks = roots
    if isinstance(tasks, (str, Mapping, int)) and not isinstance(tasks, bool):
        tasks = [tasks]
    if not validate._collection(tasks) or not tasks:
        raise InputTypeError(f"tasks must be a non-empty list of task specs (or 'all'), got {validate.given(tasks)}")
    normalised = [_task(i, t, roots) for i, t in enumerate(tasks)]
    variants = _configs(configs)
    seeds = _seeds(seeds)
    n_random = validate.integer("n_random", n_random, 0)
    runs = [Run(model, task, name, label, seed,
                dataclasses.replace(cfg, seed=seed, progress=False).to_json(), n_random)
            for task, name in normalised for label, cfg in variants for seed in seeds]
    seen: dict[str, Run] = {}
    for r in runs:
        if r.run_id in seen:
            raise InputValueError(f"the grid defines run {r.run_id} twice (task {r.task_name!r}, settings "
                                  f"{seen[r.run_id].settings!r} and {r.settings!r}); remove the duplicate")
        seen[r.run_id] = r
    return runs
