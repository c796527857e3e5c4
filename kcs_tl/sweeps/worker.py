"""What a worker does for one run: build the model from its spec, discover, evaluate, write the run's folder.

Workers receive plain data (a ``Run`` as JSON), never a pickled model: the
model is built where the run executes, from any spec ``kcs_tl.loading`` reads
(a zoo name, a TransformerLens name, a loader's import path, a saved folder).
The run's folder ``out_dir/<run id>/`` is written atomically
(``kcs_tl.loading.write_run``): it appears complete or not at all, so a killed
worker never leaves a folder that looks finished. A run that raises writes a folder whose ``run.json`` says
``failed`` with the error and whose ``traceback.txt`` holds its traceback; the other runs go on, the next
sweep runs it again, and ``kcs-tl sweep`` exits with status 1 naming those files.
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path

import torch

from kcs_tl.analysis.stability import headline, seed_stability
from kcs_tl.data.lm import model_lm_blocks
from kcs_tl.discovery import discover
from kcs_tl.files import MARKER, read_json, recover, result_folder
from kcs_tl.loading import load_kg, model_and_world, write_run
from kcs_tl.evaluation import evaluate
from kcs_tl.subnetwork import Subnetwork
from kcs_tl.sweeps.grid import Run
from kcs_tl.validate import InputError

RUN_FILE = "run.json"
FINISHED, FAILED = "finished", "failed"

_loaded: dict = {}  # one model per worker process, reused by its next runs


def build_model(spec: str):
    """``(model, zoo_model or None)`` for a model spec (``kcs_tl.loading.model_and_world``), reused by the next runs."""
    if spec not in _loaded:
        _loaded.clear()  # hold one model at a time
        _loaded[spec] = model_and_world(spec)
    return _loaded[spec]


def build_task(run: Run, model, zoo_model):
    """``(target, control_kg, control_lm blocks)`` of a run's task."""
    if "zoo_root" in run.task:
        from kcs_tl.zoo.task import forgetting_task

        options = {k: v for k, v in run.task.items() if k != "zoo_root"}
        task = forgetting_task(zoo_model, run.task["zoo_root"], **options)
        return task.target, task.control, task.lm
    cfg = run.discovery_config()
    return (load_kg(run.task["target"]), load_kg(run.task["control"]),
            model_lm_blocks(run.task["lm"], model, cfg.lm_block_len, cfg.prepend_bos))


def read_record(folder: Path) -> dict | None:
    """A run folder's ``run.json``, or None when the folder is not a complete run.

    A result that a crash left under a hidden name is put back first (``kcs_tl.files.recover``).
    """
    recover(folder)
    if not (folder / MARKER).is_file() or not (folder / RUN_FILE).is_file():
        return None
    try:
        record = read_json(folder / RUN_FILE, "a sweep run's record")
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("status") in (FINISHED, FAILED) else None


def _record(run: Run, status: str, row: dict, error: str | None = None) -> dict:
    base = {"run_id": run.run_id, "task": run.task_name, "seed": run.seed, "settings": run.settings,
            "group": run.group, "status": status, "error": error}
    return {"status": status, "run": run.to_json(), "row": base | row}


def _with_threads(threads: int, fn, *args):
    """``fn(*args)`` on ``threads`` torch threads (a worker's share of the machine), restoring the count."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(before)


def run_one(run_json: dict, out_dir: str, threads: int = 1) -> dict:
    """Discover and evaluate one run; write ``out_dir/<run id>/``; return its record.

    Any exception of the run is caught and recorded as a failure; Ctrl-C is not.
    """
    return _with_threads(threads, _run_one, Run.from_json(run_json), Path(out_dir))


def _run_one(run: Run, out_dir: Path) -> dict:
    folder, start = out_dir / run.run_id, time.perf_counter()
    overwrite = read_record(folder) is not None  # a failed record (finished runs are never submitted)
    try:
        model, zoo_model = build_model(run.model)
        target, control, lm = build_task(run, model, zoo_model)
        cfg = run.discovery_config()
        found = discover(model, target, control, lm, cfg)
        if found.stopped.startswith("interrupted"):
            raise KeyboardInterrupt  # a partial search must not be recorded as a finished run
        search_s = time.perf_counter() - start
        ev = evaluate(model, found.subnetwork, target, control, lm, n_random=run.n_random, seed=run.seed,
                      prepend_bos=cfg.bos(model))
        row = headline(ev, cfg.criteria)
        if run.n_random:
            row["random_target_top1"] = ev.value("target", "random", "top1")
        if "target_held_out" in set(ev.table.set):
            row["held_out_top1"] = ev.value("target_held_out", "remaining", "top1")
        row |= {"n_in_subnetwork": ev.n_in_subnetwork, "best_step": found.best_step, "stopped": found.stopped,
                "search_s": search_s, "wall_s": time.perf_counter() - start}
        record = _record(run, FINISHED, row)
        write_run(folder, overwrite, found, ev, files={"config.json": json.dumps(cfg.to_json(), indent=2),
                                                       RUN_FILE: json.dumps(record, indent=2, default=str)})
        return record
    except Exception as err:
        return record_failure(run, out_dir, f"{type(err).__name__}: {err}", traceback.format_exc(),
                              time.perf_counter() - start)


def record_failure(run: Run, out_dir: Path, error: str, trace: str = "", wall_s: float = 0.0) -> dict:
    """Write a failed run's folder (its error and traceback) and return its record.

    If even that cannot be written, the record is still returned: the sweep's table shows it.
    """
    record = _record(run, FAILED, {"wall_s": wall_s}, error)
    folder = Path(out_dir) / run.run_id
    try:
        with result_folder(folder, overwrite=read_record(folder) is not None) as tmp:
            (tmp / "traceback.txt").write_text(trace)
            (tmp / RUN_FILE).write_text(json.dumps(record, indent=2, default=str))
    except OSError as err:
        record["row"]["error"] += f" (and its record could not be written: {err})"
    return record


def stability_one(runs_json: list[dict], out_dir: str, k: int | None, threads: int = 1) -> dict:
    """Seed stability of one group's finished runs: overlap vs chance, intersection and majority evaluated.

    A bad input (a run folder that no longer loads, runs that do not match) is recorded as the group's
    error; any other exception is a bug and propagates.
    """
    return _with_threads(threads, _stability_one, [Run.from_json(r) for r in runs_json], Path(out_dir), k)


def _stability_one(runs: list[Run], out_dir: Path, k: int | None) -> dict:
    first = runs[0]
    row = {"task": first.task_name, "settings": first.settings, "group": first.group,
           "seeds": ",".join(str(r.seed) for r in runs), "error": None}
    try:
        model, zoo_model = build_model(first.model)
        target, control, lm = build_task(first, model, zoo_model)
        subs = [Subnetwork.load(out_dir / r.run_id / "subnetwork") for r in runs]
        result = seed_stability(subs, model, target, control, lm, k=k, names=[r.seed for r in runs],
                                criteria=first.discovery_config().criteria)
        modules = result.overlap.assign(task=first.task_name, settings=first.settings)
        return {"row": row | result.summary(), "modules": modules.to_dict("records")}
    except (InputError, OSError) as err:
        return {"row": row | {"error": f"{type(err).__name__}: {err}"}, "modules": []}
