"""sweep(): expand a grid, run what is not finished, aggregate every run, measure seed stability.

Finished runs (a complete folder whose ``run.json`` says finished) are skipped,
so an interrupted sweep started again reruns only the rest; failed runs are run
again. After the runs, every group of runs that differ only by seed gets its
seed stability measured (in a worker too: the evaluation needs the model).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from kcs_tl import validate
from kcs_tl.files import writable_folder
from kcs_tl.sweeps import execution, tables
from kcs_tl.sweeps.grid import Run, expand
from kcs_tl.sweeps.worker import FAILED, FINISHED, read_record, record_failure, run_one, stability_one
from kcs_tl.validate import InputValueError


@dataclass
class SweepResult:
    """Everything a sweep produced: per-run table, seed-stability tables, and what it did this time."""

    runs: pd.DataFrame
    stability: pd.DataFrame
    stability_modules: pd.DataFrame
    out_dir: Path
    executor: str
    counts: dict = field(default_factory=dict)  # ran, skipped, failed (this call)
    wall_s: float = 0.0
    files: list = field(default_factory=list)

    def __repr__(self) -> str:
        met = int(self.runs.get("criteria_met", pd.Series(dtype=bool)).fillna(False).astype(bool).sum())
        finished = int((self.runs.status == FINISHED).sum()) if len(self.runs) else 0
        c = self.counts
        return (f"SweepResult({len(self.runs)} runs in {self.out_dir}: {finished} finished, "
                f"{len(self.runs) - finished} failed, {met} met every criterion; this call ran "
                f"{c.get('ran', 0)} on {self.executor}, skipped {c.get('skipped', 0)} finished, "
                f"{self.wall_s:.0f} s)\n\nRuns:\n{tables.shown(self.runs, tables.RUN_COLUMNS)}\n\n"
                f"Seed stability (Jaccard between seeds vs chance; intersection and majority evaluated):\n"
                f"{tables.shown(self.stability, tables.STABILITY_COLUMNS)}")

    def _repr_html_(self) -> str:
        fmt = lambda x: f"{x:.4f}"  # noqa: E731
        runs = tables.ordered(self.runs, tables.RUN_COLUMNS).to_html(index=False, float_format=fmt)
        stab = tables.ordered(self.stability, tables.STABILITY_COLUMNS).to_html(index=False, float_format=fmt)
        head = repr(self).split("\n")[0]
        return f"<p><b>{head}</b></p><h4>Runs</h4>{runs}<h4>Seed stability</h4>{stab}"


def sweep(model_spec: str, tasks, configs=None, seeds=(0,), out_dir: str | os.PathLike = "kcs_out/sweep", *,
          n_random: int = 3, executor: str = "auto", ray_address: str | None = None, num_cpus: int | None = None,
          cpus_per_run: float = 1, gpus_per_run: float | None = None, majority_k: int | None = None,
          progress: bool = True) -> SweepResult:
    """Run the grid ``tasks x configs x seeds`` on ``model_spec``; one result folder per run in ``out_dir``.

    Args:
        model_spec: a built-in model (``"tiny-world"``), a TransformerLens model name with local
            weights (``"gpt2"``), or ``"package.module:function"`` returning a HookedTransformer.
            Workers build the model themselves.
        tasks: TargetKGs: for a built-in model its roots (names or indices, or ``"all"``); for any
            model, dicts ``{"target": KG, "control": KG, "lm": FILE}`` (see ``kcs_tl.sweeps.grid.expand``).
        configs: settings variants: ``None`` (defaults), a list of ``DiscoveryConfig``s or dicts of
            its fields, or a dict of name -> those. Each run's seed comes from ``seeds``.
        seeds: the seeds of every (task, settings) pair.
        out_dir: holds ``<run id>/`` per run, and ``runs.csv``, ``stability.csv``, ``stability_modules.csv``
            (and ``.parquet`` with pyarrow).
        n_random: random subnetworks of the same size each run is evaluated against.
        executor: ``"auto"`` (Ray when installed, else in-process), ``"ray"`` or ``"sequential"``.
        ray_address: an existing Ray cluster (``"auto"``, ``"ray://host:10001"``); default: Ray
            started locally with ``num_cpus`` (default all cores) and every local GPU.
        cpus_per_run: CPUs each run requests, and the torch threads it uses (also in-process).
        gpus_per_run: GPUs each run requests; default a whole GPU (a quarter for a built-in
            model) when the cluster has GPUs and the run's device is not ``"cpu"``, else none.
        majority_k: the k of the k-of-n majority subnetwork; default a strict majority.
        progress: one bar over the runs, with finished / failed counts.

    Ctrl-C stops the sweep; runs that finished are kept, a run in progress leaves
    nothing that looks finished, and the next call runs the rest.
    """
    start = time.perf_counter()
    runs = expand(model_spec, tasks, configs, seeds, n_random)
    num_cpus = validate.optional(validate.integer, "num_cpus", num_cpus, 1)
    cpus_per_run = validate.number("cpus_per_run", cpus_per_run, 0)
    gpus_per_run = validate.optional(validate.number, "gpus_per_run", gpus_per_run, 0)
    majority_k = validate.optional(validate.integer, "majority_k", majority_k, 1, len({r.seed for r in runs}))
    progress = validate.boolean("progress", progress)
    threads = max(1, math.floor(cpus_per_run))
    if num_cpus is not None and ray_address is not None:
        raise InputValueError("num_cpus applies to a Ray started locally; with ray_address the cluster has its own")
    name = execution.choose(executor, ray_address)
    out = writable_folder(validate.path("out_dir", out_dir)).resolve()

    records = {r.run_id: read_record(out / r.run_id) for r in runs}
    todo = [r for r in runs if (records[r.run_id] or {}).get("status") != FINISHED]
    counts = {"ran": 0, "skipped": len(runs) - len(todo), "finished": 0, "failed": 0}
    pool = execution.pool(name, ray_address, num_cpus)
    try:
        if todo:
            _run_grid(pool, todo, out, threads, cpus_per_run, gpus_per_run, records, counts, progress)
        runs_table = _runs_table(runs, records)
        stability, modules = _stability(pool, runs, records, out, majority_k, threads, cpus_per_run, gpus_per_run)
    finally:
        pool.close()
    files = (tables.write(runs_table, out, "runs") + tables.write(stability, out, "stability")
             + tables.write(modules, out, "stability_modules"))
    return SweepResult(runs_table, stability, modules, out, name, counts, time.perf_counter() - start, files)


def _resources(pool, runs: list[Run], cpus_per_run, gpus_per_run) -> dict:
    from kcs_tl import zoo

    first = runs[0]
    return pool.resources(cpus_per_run, gpus_per_run, first.config["device"], first.model in zoo.available())


def _run_grid(pool, todo: list[Run], out: Path, threads: int, cpus_per_run, gpus_per_run, records: dict,
              counts: dict, progress: bool) -> None:
    resources = _resources(pool, todo, cpus_per_run, gpus_per_run)
    bar = tqdm(total=counts["skipped"] + len(todo), initial=counts["skipped"], desc="sweep", unit="run",
               disable=not progress)

    def done(i: int, record: dict) -> None:
        records[todo[i].run_id] = record
        counts["ran"] += 1
        counts["finished" if record["status"] == FINISHED else "failed"] += 1
        bar.update()
        bar.set_postfix(finished=counts["finished"], failed=counts["failed"], skipped=counts["skipped"])

    def died(i: int, err: BaseException) -> None:
        done(i, record_failure(todo[i], out, _death(err)))

    try:
        pool.map(run_one, [(r.to_json(), str(out), threads) for r in todo], resources, done, died)
    finally:
        bar.close()


def _death(err: BaseException) -> str:
    """What a Ray worker's death (killed, out of memory...) is recorded as: its kind and last line."""
    last = (str(err).strip().splitlines() or [""])[-1]
    return f"the worker died ({type(err).__name__}: {last[:300]})"


def _runs_table(runs: list[Run], records: dict) -> pd.DataFrame:
    rows = [records[r.run_id]["row"] if records[r.run_id] else {"run_id": r.run_id, "task": r.task_name,
            "seed": r.seed, "settings": r.settings, "group": r.group, "status": "not run"} for r in runs]
    return tables.ordered(pd.DataFrame(rows), tables.RUN_COLUMNS)


def _stability(pool, runs: list[Run], records: dict, out: Path, k, threads, cpus_per_run, gpus_per_run):
    """Seed stability of every group with at least two finished runs (one row per group; per-module rows)."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        if (records[r.run_id] or {}).get("status") == FINISHED:
            groups.setdefault(r.group, []).append(r)
    groups = {g: rs for g, rs in groups.items() if len(rs) >= 2}
    rows, modules = [], []
    if groups:
        calls = [([r.to_json() for r in rs], str(out), k, threads) for rs in groups.values()]
        results: list = [None] * len(calls)

        def done(i, result):
            results[i] = result

        def died(i, err):
            rs = list(groups.values())[i]
            results[i] = {"row": {"task": rs[0].task_name, "settings": rs[0].settings, "group": rs[0].group,
                                  "error": _death(err)}, "modules": []}

        pool.map(stability_one, calls, _resources(pool, runs, cpus_per_run, gpus_per_run), done, died)
        rows = [r["row"] for r in results]
        modules = [m for r in results for m in r["modules"]]
    stability = tables.ordered(pd.DataFrame(rows, columns=None if rows else tables.STABILITY_COLUMNS),
                               tables.STABILITY_COLUMNS)
    return stability, pd.DataFrame(modules)
