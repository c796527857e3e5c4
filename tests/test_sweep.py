"""Sweeps: the grid, stable run ids, restart after an interruption, failed runs, tables, seed stability, Ray.

Most tests run the toy world (a tiny random model built by a loader function,
``test_sweep:toy_model``) in-process; the Ray test runs a 2-run grid of the
built-in tiny-world model on a local Ray with 2 CPUs and compares it with the
sequential path (``-m slow``: Ray's start-up alone takes ~10 s here).
"""

import contextlib
import io
import json
import math
import shutil
import warnings

import pandas as pd
import pytest
import torch

import kcs_tl
import kcs_tl.cli as cli
import kcs_tl.sweeps.worker as worker
from kcs_tl import Subnetwork, attach_masks, majority, seed_stability
from kcs_tl.analysis.stability import chance_jaccard, pairwise_jaccard
from kcs_tl.files import MARKER
from kcs_tl.sweeps import execution, expand, sweep

from conftest import toy_world

LOADER = "test_sweep:toy_model"
QUICK = dict(steps=4, eval_every=2, kg_batch_size=16, lm_batch_size=4, early_stop=False, layers=(1,),
             device="cpu")


def toy_model():
    """The loader the sweeps build their model with (an import path, as a worker would)."""
    return toy_world()[0]


@pytest.fixture
def tasks(tmp_path):
    """Two toy tasks as files: different TargetKGs, one shared ControlKG and LM text."""
    _, target, control, _ = toy_world()
    control.save(tmp_path / "control.jsonl")
    (tmp_path / "lm.txt").write_text("the story went and thing1 is red\n" * 50)
    out = []
    for i, rows in enumerate((target.triplets[:3], target.triplets[3:])):
        target.subset(rows).save(tmp_path / f"target{i}.jsonl")
        out.append({"target": str(tmp_path / f"target{i}.jsonl"), "control": str(tmp_path / "control.jsonl"),
                    "lm": str(tmp_path / "lm.txt"), "name": f"t{i}"})
    return out


def run_sweep(tasks, out, seeds=(0, 1), **kwargs):
    return sweep(LOADER, tasks, [QUICK], seeds, out, n_random=1, executor="sequential", progress=False, **kwargs)


class CountingDiscover:
    """Stands in for ``discover`` in the worker: counts calls, raises where told."""

    def __init__(self, fail_on=None):
        self.calls, self.fail_on = [], fail_on or (lambda n, cfg: None)

    def __call__(self, model, target, control, lm, cfg):
        self.calls.append(cfg.seed)
        error = self.fail_on(len(self.calls), cfg)
        if error is not None:
            raise error
        return kcs_tl.discover(model, target, control, lm, cfg)


# -- the grid -----------------------------------------------------------------------


def test_grid_expands_with_stable_ids():
    runs = expand("tiny-world", [0, "fokar"], {"a": {"steps": 10}, "b": {"steps": 20}}, [0, 1, 2])
    assert len(runs) == 2 * 2 * 3
    assert [(r.task_name, r.settings, r.seed) for r in runs[:4]] == [
        ("moutru", "a", 0), ("moutru", "a", 1), ("moutru", "a", 2), ("moutru", "b", 0)]
    assert len({r.run_id for r in runs}) == 12 and all(r.run_id.startswith(r.task_name) for r in runs)
    again = expand("tiny-world", ["moutru", 1], [{"steps": 10}, {"steps": 20}], [0, 1, 2])
    assert [r.run_id for r in again] == [r.run_id for r in runs]  # names are labels, not part of the id
    assert again[0].settings == "steps=10"
    assert {r.group for r in runs[:3]} == {runs[0].group} != runs[3].group  # seeds share a group
    assert expand("tiny-world", [0], [{"steps": 11}], [0])[0].run_id != runs[0].run_id
    assert len(expand("tiny-world", "all", None, [0])) == 18
    small = expand("tiny-world", [{"root": 0, "n_control": 50, "n_blocks": 8}], None, [0])[0]
    assert small.task == {"zoo_root": "moutru", "n_control": 50, "n_blocks": 8}


@pytest.mark.parametrize("call, error, match", [
    (lambda: expand("tiny-world", ["nope"]), ValueError, r"tasks\[0\] = 'nope' is not a TargetKG .* valid: \["),
    (lambda: expand("tiny-world", [99]), ValueError, r"tasks\[0\] = 99: the built-in model has TargetKGs 0\.\.17"),
    (lambda: expand("tiny-world", []), TypeError, r"tasks must be a non-empty list"),
    (lambda: expand("tiny-world", [{"root": 0, "n_ctrl": 5}]), ValueError, r"tasks\[0\] has unknown key"),
    (lambda: expand("x.y:make", [0]), ValueError, r"names a built-in TargetKG, but the model is not"),
    (lambda: expand("tiny-world", [{"target": "a.jsonl"}]), ValueError, r"missing \['control', 'lm'\]"),
    (lambda: expand("tiny-world", [{"target": "/no/a.jsonl", "control": "wordnet:control", "lm": "/no/lm"}]),
     FileNotFoundError, r"tasks\[0\]\.target: /no/a.jsonl is not a file"),
    (lambda: expand(None, [0]), TypeError, r"model_spec must be a string"),
    (lambda: expand("a:b:c", [0]), ValueError, r"'package.module:function'"),
    (lambda: expand("tiny-world", [0], seeds=[0, 0]), ValueError, r"seeds holds duplicates"),
    (lambda: expand("tiny-world", [0], seeds=[-1]), ValueError, r"seeds\[0\] must be an int >= 0"),
    (lambda: expand("tiny-world", [0], seeds=[]), ValueError, r"seeds is empty"),
    (lambda: expand("tiny-world", [0], [{"stepz": 3}]), ValueError, r"configs\[0\]: unknown config fields \['stepz'\]"),
    (lambda: expand("tiny-world", [0], {"fast": {"steps": 0}}), ValueError, r"configs\['fast'\]: .*steps must be"),
    (lambda: expand("tiny-world", [0], [{"steps": 5}, {"steps": 5}]), ValueError, r"defines run .* twice"),
    (lambda: expand("tiny-world", [0], 3), TypeError, r"configs must be a list"),
    (lambda: expand("tiny-world", [0], [{"checkpoint_every": 5, "checkpoint_dir": "c"}]), ValueError,
     r"configs\[0\]: checkpoint_every would make every run"),
    (lambda: expand("tiny-world", [0], n_random=-1), ValueError, r"n_random must be an int >= 0"),
    (lambda: sweep("tiny-world", [0], executor="dask"), ValueError, r"executor must be one of \('auto', 'ray', "),
    (lambda: sweep("tiny-world", [0], executor="sequential", ray_address="auto"), ValueError,
     r"ray_address is given, but executor='sequential'"),
    (lambda: sweep("tiny-world", [0], num_cpus=0), ValueError, r"num_cpus must be an int >= 1"),
    (lambda: sweep("tiny-world", [0], seeds=[0, 1], majority_k=3), ValueError, r"majority_k must be an int in \[1, 2\]"),
    (lambda: sweep("tiny-world", [0], cpus_per_run=-1), ValueError, r"cpus_per_run must be a finite number >= 0"),
])
def test_bad_sweep_inputs(call, error, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=match):
        call()


# -- running, restarting, failing -----------------------------------------------------


def test_interrupted_sweep_runs_only_the_rest(tasks, tmp_path, monkeypatch):
    """Interrupted after 2 of 4 runs, a restart runs the other 2; a half-written run is not finished."""
    out = tmp_path / "sweep"
    stop = CountingDiscover(lambda n, cfg: KeyboardInterrupt() if n == 3 else None)
    monkeypatch.setattr(worker, "discover", stop)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(tasks, out)
    finished = sorted(p.name for p in out.iterdir())
    assert len(finished) == 2 and all((out / f / MARKER).is_file() for f in finished)  # no temporary left
    runs = expand(LOADER, tasks, [QUICK], [0, 1], n_random=1)
    # a run killed while writing leaves only a hidden temporary (here with a dead writer's pid)
    half = out / f".{runs[2].run_id}.kcs_tl-tmp-999999@nohost-x"
    half.mkdir()
    (half / "run.json").write_text(json.dumps({"status": "finished"}))
    again = CountingDiscover()
    monkeypatch.setattr(worker, "discover", again)
    result = run_sweep(tasks, out)
    assert len(again.calls) == 2 and result.counts == {"ran": 2, "skipped": 2, "finished": 2, "failed": 0}
    assert list(result.runs.run_id) == [r.run_id for r in runs] and set(result.runs.status) == {"finished"}
    third = CountingDiscover()
    monkeypatch.setattr(worker, "discover", third)
    assert run_sweep(tasks, out).counts["skipped"] == 4 and third.calls == []


def test_failed_run_is_recorded_and_others_finish(tasks, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    failing = CountingDiscover(lambda n, cfg: RuntimeError("boom: out of memory") if cfg.seed == 1 else None)
    monkeypatch.setattr(worker, "discover", failing)
    result = run_sweep(tasks, out)
    assert len(failing.calls) == 4
    assert result.counts == {"ran": 4, "skipped": 0, "finished": 2, "failed": 2}
    failed = result.runs[result.runs.status == "failed"]
    assert list(failed.seed) == [1, 1] and set(failed.error) == {"RuntimeError: boom: out of memory"}
    assert "boom" in (out / failed.run_id.iloc[0] / "traceback.txt").read_text()
    assert result.runs[result.runs.status == "finished"].sparsity.notna().all()
    assert result.stability.empty  # one finished seed per task: nothing to compare
    retry = CountingDiscover()
    monkeypatch.setattr(worker, "discover", retry)
    result = run_sweep(tasks, out)  # failed runs are run again, finished ones are not
    assert retry.calls == [1, 1] and set(result.runs.status) == {"finished"}


def test_seed_stability_records_a_bad_input_and_raises_a_bug(tasks, tmp_path, monkeypatch):
    """A group whose run folders no longer load gets its error in the stability table; a bug in the
    stability code is raised, not recorded as if the group's data were at fault."""
    out = tmp_path / "sweep"
    first = run_sweep(tasks, out)
    shutil.rmtree(out / first.runs.run_id.iloc[0] / "subnetwork")
    errors = run_sweep(tasks, out).stability.set_index("task").error
    assert "subnetwork is not a saved subnetwork" in errors["t0"] and pd.isna(errors["t1"])

    def buggy(*args, **kwargs):
        return len(None)

    monkeypatch.setattr(worker, "seed_stability", buggy)
    with pytest.raises(TypeError, match="NoneType"):
        run_sweep(tasks, out)


def test_tables_and_seed_stability_of_a_sweep(tasks, tmp_path):
    result = run_sweep(tasks, tmp_path / "sweep", seeds=(0, 1, 2))
    runs = result.runs
    assert len(runs) == 6 and runs.run_id.is_unique and set(runs.status) == {"finished"}
    for column in ("task", "seed", "settings", "sparsity", "target_top1", "control_ratio", "lm_ppl_rise",
                   "criteria_met", "wall_s", "random_target_top1"):
        assert runs[column].notna().all(), column
    assert sorted(p.name for p in result.files) == sorted(
        f"{stem}.{ext}" for stem in ("runs", "stability", "stability_modules") for ext in ("csv", "parquet"))
    assert len(pd.read_csv(tmp_path / "sweep" / "runs.csv")) == 6
    assert len(pd.read_parquet(tmp_path / "sweep" / "runs.parquet")) == 6
    stab = result.stability
    assert list(stab.task) == ["t0", "t1"] and set(stab.seeds) == {"0,1,2"} and set(stab.k) == {2}
    assert ((stab.jaccard >= 0) & (stab.jaccard <= 1) & (stab.chance > 0)).all()
    assert (stab.intersection_size <= stab.majority_size).all()
    assert stab.intersection_criteria_met.notna().all() and stab.majority_target_top1.notna().all()
    modules = result.stability_modules
    assert set(modules.module) == {"attn", "mlp", "overall"} and len(modules) == 2 * 3
    text = repr(result)
    assert "Runs:" in text and "Seed stability" in text and "jaccard" in text
    assert "<table" in result._repr_html_()
    folder = tmp_path / "sweep" / runs.run_id.iloc[0]
    assert {"subnetwork", "config.json", "history.csv", "evaluation.csv", "run.json"} <= {
        p.name for p in folder.iterdir()}
    assert Subnetwork.load(folder / "subnetwork").sparsity() == pytest.approx(runs.sparsity.iloc[0])


def test_sequential_fallback_says_so_once(tasks, tmp_path, monkeypatch):
    monkeypatch.setattr(execution, "ray_available", lambda: False)
    monkeypatch.setattr(execution, "_warned", False)
    with pytest.warns(RuntimeWarning, match="Ray is not installed: the sweep runs sequentially"):
        assert execution.choose("auto", None) == "sequential"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert execution.choose("auto", None) == "sequential"  # not a second time
    with pytest.raises(ValueError, match=r"needs Ray: pip install 'kcs-tl\[ray\]'"):
        execution.choose("ray", None)


def spec_file(tasks, tmp_path) -> str:
    """A .toml spec of the toy tasks x seeds 0, 1 with the QUICK settings, writing to ``out``."""
    spec = tmp_path / "grid.toml"
    task_lines = "\n".join(f'[[tasks]]\ntarget = "{t["target"]}"\ncontrol = "{t["control"]}"\nlm = "lm.txt"\n'
                           f'name = "{t["name"]}"' for t in tasks)
    base = "\n".join(f"{k} = {json.dumps(v) if not isinstance(v, tuple) else list(v)}" for k, v in QUICK.items())
    spec.write_text(f'model = "{LOADER}"\nseeds = [0, 1]\nn_random = 0\nout_dir = "out"\n{task_lines}\n'
                    f"[base]\n{base}\n")
    return str(spec)


def test_cli_sweep_prints_both_tables(tasks, tmp_path, capsys):
    cli.main(["sweep", spec_file(tasks, tmp_path), "--sequential"])
    printed = capsys.readouterr().out
    assert "Runs:" in printed and "Seed stability" in printed and "runs.csv" in printed
    assert len(pd.read_csv(tmp_path / "out" / "runs.csv")) == 4
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": "tiny-world", "tasks": [0], "seedz": [0]}))
    with contextlib.redirect_stderr(io.StringIO()) as err, pytest.raises(SystemExit) as exit_info:
        cli.main(["sweep", str(bad)])
    assert exit_info.value.code == 2
    assert err.getvalue().strip().startswith("kcs-tl sweep: error: ") and "did you mean ['seeds']" in err.getvalue()
    assert err.getvalue().count("\n") == 1


def test_cli_sweep_exits_1_naming_the_tracebacks_of_failed_runs(tasks, tmp_path, monkeypatch, capsys):
    """Failed runs are recorded and the others finish, but the command does not report success."""
    monkeypatch.setattr(worker, "discover", CountingDiscover(lambda n, cfg: RuntimeError("boom") if cfg.seed else None))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sweep", spec_file(tasks, tmp_path), "--sequential"])
    assert exit_info.value.code == 1
    last = capsys.readouterr().err.splitlines()[-1]  # after the progress bar
    assert last.startswith("kcs-tl sweep: 2 run(s) failed; tracebacks: ") and last.count("traceback.txt") == 2


# -- seed stability on hand-made masks ---------------------------------------------------


def _sub(model, members: dict[str, range]) -> Subnetwork:
    """A subnetwork of the toy model's layer-1 W_in and W_out holding the given flat indices."""
    masked = attach_masks(model, weights=("W_in", "W_out"), layers=[1])
    sub = masked.to_subnetwork()
    masked.detach()
    masks = {}
    for address, m in sub.masks.items():
        flat = torch.zeros(m.numel(), dtype=torch.bool)
        flat[list(members.get(address.split(".")[-1], []))] = True
        masks[address] = flat.reshape(m.shape)
    return Subnetwork(masks, sub.sites, sub.fingerprint)


def test_jaccard_on_masks_with_known_overlap(toy):
    model = toy[0]
    n = 32 * 64  # units per matrix
    a = _sub(model, {"W_in": range(0, 100), "W_out": range(0, 10)})
    b = _sub(model, {"W_in": range(50, 150), "W_out": range(0, 10)})
    c = _sub(model, {"W_in": range(100, 200), "W_out": range(5, 15)})
    assert chance_jaccard(100, 100, n) == pytest.approx((100 * 100 / n) / (200 - 100 * 100 / n))
    assert chance_jaccard(0, 0, n) == 1.0
    pairs = pairwise_jaccard([a, b], by="site").set_index("address")
    assert pairs.loc["blocks.1.mlp.W_in", "jaccard"] == pytest.approx(50 / 150)
    assert pairs.loc["blocks.1.mlp.W_out", "jaccard"] == 1.0
    assert pairs.loc["overall", "jaccard"] == pytest.approx(60 / 160)
    chance_inter = 100 * 100 / n + 10 * 10 / n
    assert pairs.loc["overall", "chance"] == pytest.approx(chance_inter / (220 - chance_inter))
    result = seed_stability([a, b, c], names=[0, 1, 2])
    overall = result.overlap.set_index("layer").loc["overall"]
    # pairs (a,b): 60/160, (a,c): 5/215 (W_out 5..9), (b,c): 50/150 + W_out 5/15 -> 55/165
    assert overall.jaccard == pytest.approx((60 / 160 + 5 / 215 + 55 / 165) / 3)
    assert result.jaccard == pytest.approx(overall.jaccard) and result.chance < result.jaccard
    assert result.k == 2 and result.n == 3
    assert result.intersection.n_in_subnetwork() == 5  # W_out 5..9 only: W_in has no unit in all three
    assert result.majority.n_in_subnetwork() == majority([a, b, c], 2).n_in_subnetwork() == 100 + 10
    assert result.evaluations == {} and "SeedStability(3 subnetworks" in repr(result)
    with pytest.raises(ValueError, match="at least 2 subnetworks"):
        seed_stability([a])
    with pytest.raises(ValueError, match=r"by must be one of \('site', 'module', 'layer'\)"):
        pairwise_jaccard([a, b], by="head")
    with pytest.raises(ValueError, match="all of model, target, control_kg and control_lm"):
        seed_stability([a, b], model)


def test_seed_stability_evaluates_intersection_and_majority(toy):
    model, target, control, blocks = toy
    a = _sub(model, {"W_in": range(0, 300)})
    b = _sub(model, {"W_in": range(100, 400)})
    result = seed_stability([a, b], model, target, control, blocks)
    assert set(result.evaluations) == {"intersection", "majority"}
    summary = result.summary()
    assert summary["intersection_size"] == 200 and math.isfinite(summary["intersection_target_top1"])
    assert isinstance(summary["majority_criteria_met"], bool)


# -- Ray -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ray_grid_matches_sequential(tmp_path):
    """A 2-run grid of the built-in model on a local Ray (2 CPUs) gives what the sequential path gives."""
    pytest.importorskip("ray")
    import ray

    task = [{"root": 0, "n_control": 60, "n_blocks": 12}]
    config = [QUICK | {"layers": None}]
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        on_ray = sweep("tiny-world", task, config, [0, 1], tmp_path / "ray", n_random=1, executor="ray",
                       progress=False)
    finally:
        ray.shutdown()
    in_process = sweep("tiny-world", task, config, [0, 1], tmp_path / "seq", n_random=1, executor="sequential",
                       progress=False)
    assert on_ray.executor == "ray" and in_process.executor == "sequential"
    assert set(on_ray.runs.status) == {"finished"} and len(on_ray.runs) == 2
    numbers = ["run_id", "sparsity", "target_top1", "control_ratio", "lm_ppl_rise", "n_in_subnetwork",
               "random_target_top1"]
    pd.testing.assert_frame_equal(on_ray.runs[numbers], in_process.runs[numbers])
    for run_id in on_ray.runs.run_id:
        x = Subnetwork.load(tmp_path / "ray" / run_id / "subnetwork")
        y = Subnetwork.load(tmp_path / "seq" / run_id / "subnetwork")
        assert all(torch.equal(x.masks[k], y.masks[k]) for k in x.masks)
    assert len(on_ray.stability) == 1 and on_ray.stability.error.isna().all()
    assert on_ray.stability.jaccard.iloc[0] == in_process.stability.jaccard.iloc[0]


def _benchmark():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import sweep as benchmark

    return benchmark


def test_benchmark_quick_sequential(tmp_path, capsys):
    import torch

    threads = torch.get_num_threads()
    report = _benchmark().main(["--quick", "--modes", "sequential", "--sequential-threads", "2", "--out",
                                str(tmp_path)])
    out = capsys.readouterr().out
    assert len(report["runs"]) == 4 and len(report["stability"]) == 2 and report["wall_s"]["sequential"] > 0
    assert "sequential: 4 runs" in out and "seed stability" in out and "runs meeting every criterion" in out
    assert "sequential on 2 torch thread(s)" in out and torch.get_num_threads() == threads


@pytest.mark.slow
def test_benchmark_quick_ray_vs_sequential(tmp_path, capsys):
    pytest.importorskip("ray")
    report = _benchmark().main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert set(report["wall_s"]) == {"ray", "sequential"} and report["speedup"] > 0
    assert report["max_difference"] == 0 and "same results on both: yes" in out and "sequential / Ray" in out


def test_configs_dict_is_one_variant_or_named():
    one = expand("tiny-world", [0], {"steps": 20, "criteria": {"sparsity_min": 0.9}})
    assert len(one) == 1 and one[0].config["steps"] == 20 and one[0].config["criteria"]["sparsity_min"] == 0.9
    assert len(expand("tiny-world", [0], {"criteria": {"sparsity_min": 0.9}})) == 1
    named = expand("tiny-world", [0], {"weights": {}, "rows": {"granularity": "row"}})
    assert [r.settings for r in named] == ["weights", "rows"] and named[1].config["granularity"] == "row"


@pytest.mark.parametrize("prepend_bos", [None, True, False])
def test_a_run_tokenises_its_lm_text_as_discover_does(tasks, prepend_bos):
    run = expand(LOADER, tasks[:1], [QUICK | {"prepend_bos": prepend_bos}], [0])[0]
    model, zoo_model = worker.build_model(run.model)
    blocks = worker.build_task(run, model, zoo_model)[2]
    bos = model.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
    assert bool((blocks[:, 0] == model.tokenizer.bos_token_id).all()) == bos
