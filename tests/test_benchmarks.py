"""The benchmark scripts run end to end at --quick sizes, and their claims hold.

Where a benchmark says a target is met, its test asserts it: at the quick
size when that size reaches it, else against a bound the quick size does
reach (each test's docstring says which), with the full claim in a test
marked slow. No timing thresholds: the machine is shared and noisy, so timing
targets are never asserted. They run on one torch thread: on a shared 2-core
machine the default 2 threads made the built-in case take minutes instead of
seconds (thread oversubscription).
"""

import math
import operator
import sys
from pathlib import Path

import pytest
import torch

from kcs_tl.discovery import DiscoveryConfig
from kcs_tl.evaluation import Criteria

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bridge as bridge_benchmark  # noqa: E402
import convergence  # noqa: E402
import discovery  # noqa: E402
import interventions  # noqa: E402
import scaling  # noqa: E402
import step_cost  # noqa: E402

BUILTIN_WEIGHTS = Path(__file__).resolve().parents[1] / "kcs_tl" / "zoo" / "tiny_world" / "model.safetensors"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _check_step_cost(rows, out: str) -> None:
    """The byte target (mask state <= 3x the masked weights) is asserted; the timing targets b/a and
    c/b are not (one repeat on a shared machine), only that each printed verdict matches its number."""
    assert len(rows) == 1
    row = rows[0]
    for key in ("a", "b", "c"):
        assert row[key + "_s"] > 0
        assert row[key + "_peak"] >= 0
    assert row["state"] > 0 and row["weights"] > 0
    for ratio in step_cost.TARGETS:
        assert math.isfinite(row[ratio]) and row[ratio] > 0, ratio
    assert row["model"] in out
    for label in ("(a) plain fine-tuning step", "(b) discover step", "(c) published-scheme step", "mask state"):
        assert label in out
    for ratio, (op, bound) in step_cost.TARGETS.items():
        met = {"<=": operator.le, ">=": operator.ge}[op](row[ratio], bound)
        line = next(line for line in out.splitlines() if line.strip().startswith(ratio))
        assert line.endswith("meets" if met else "MISSES"), line
    assert row["mask state / masked weights"] <= step_cost.TARGETS["mask state / masked weights"][1]


def test_step_cost_quick_gpt2(capsys):
    rows = step_cost.main(["--quick", "--models", "gpt2"])
    _check_step_cost(rows, capsys.readouterr().out)


def test_step_cost_quick_builtin(capsys):
    assert BUILTIN_WEIGHTS.exists(), "the built-in tiny-world model is not shipped"
    rows = step_cost.main(["--quick", "--models", "builtin"])
    _check_step_cost(rows, capsys.readouterr().out)
    assert "tiny-world" in rows[0]["model"]


def test_scaling_quick(tmp_path, capsys):
    png = tmp_path / "sub" / "s.png"  # a folder that does not exist yet
    rows = scaling.main(["--quick", "--out", str(png)])
    out = capsys.readouterr().out
    assert {r["sweep"] for r in rows} == {"depth", "width"}
    for r in rows:
        assert r["masked_params"] > 0
        assert r["step_s"] > 0
        assert r["peak_bytes"] >= 0
        assert math.isfinite(r["ms_per_m"]) and r["ms_per_m"] > 0
        assert r["ms_per_m"] == pytest.approx(r["step_s"] * 1e3 / (r["masked_params"] / 1e6))
        assert f"{r['masked_params']:,d}" in out
    # masking more layers (depth) or wider layers (width) masks more parameters
    for sweep in ("depth", "width"):
        counts = [r["masked_params"] for r in rows if r["sweep"] == sweep]
        assert counts == sorted(counts) and len(set(counts)) == len(counts) > 1
    for header in ("masked params", "step ms", "peak MiB", "ms / M masked"):
        assert header in out
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_discovery_and_convergence_quick(capsys):
    """Six steps meet one criterion, asserted: TargetKG top-1 <= 0.1 (0.0 measured, on evaluation and
    validation). The others need ~200 steps (test_discovery_meets_every_criterion_in_time); as bounds
    six steps reach: sparsity above its initial 0.55 (0.61 measured), and the held-out wording's gold
    log-prob falls more than 1 nat below what random subnetworks of the same size do (-13.4 vs -0.3)."""
    table = discovery.main(["--quick"])
    out = capsys.readouterr().out
    assert len(table) == 1 and "runs meeting all criteria" in out and "held-out" in out
    run, criteria = table.iloc[0], Criteria()
    assert run.target_top1 <= criteria.target_top1_max
    assert 1 - DiscoveryConfig().init_prob < run.sparsity <= 1
    assert run.held_out_dlogp < run.held_out_dlogp_random - 1
    table = convergence.main(["--quick"])
    assert list(table.schedule) == ["default"] and "target: success within 4000 steps" in capsys.readouterr().out
    assert table.val_target_top1.iloc[0] <= criteria.target_top1_max


@pytest.mark.slow  # one default search to the criteria (~200 steps) and its evaluation: about 80 s
def test_discovery_meets_every_criterion_in_time():
    """The full claims of discovery.py and convergence.py, on TargetKG root 0 with seed 0 (default settings):
    every criterion met on evaluation, random subnetworks of the same size within 5 points of the
    original TargetKG top-1, and the search stopped on the criteria within convergence's 4,000 steps."""
    run = discovery.main(["--roots", "0", "--seeds", "0"]).iloc[0]
    assert run.criteria_met
    assert abs(run.target_top1_before - run.random_target_top1) <= 0.05
    assert run.stopped.startswith("criteria met") and run.steps <= convergence.TARGET_STEPS


@pytest.mark.slow  # one forward per neuron for 512 neurons: about 10 s
def test_patching_quick(capsys):
    import patching

    row = patching.main(["--quick"])
    out = capsys.readouterr().out
    assert row["max |batched - looped|"] < 1e-4 and row["looped / batched (s)"] > 0
    for kind in ("heads", "neurons"):
        assert -1 <= row[f"spearman, {kind}"] <= 1 and row[f"exact / attribution (s), {kind}"] > 0
    assert "(1) neurons: batched" in out and "(2) heads: exact" in out


def test_large_vocab_quick(capsys):
    import large_vocab

    rows = large_vocab.main(["--quick", "--lm-blocks", "4", "--steps", "1", "--teachers", "auto,on_the_fly"])
    assert [r["chosen"].split(":")[0] for r in rows] == ["full", "on_the_fly"]
    assert all(r["step_s"] > 0 and r["prepare_s"] > 0 for r in rows)
    assert all(0 < r["peak_rss_gib"] <= large_vocab.TARGET_GIB for r in rows)  # the target: within 24 GiB
    assert "MISSES" not in capsys.readouterr().out


def test_interventions_quick(capsys):
    """Four steps open no gate yet (they start at init_prob 0.25), so parts (a) and (b) cannot reach
    their targets at this size and their verdicts are only counted; the gender target the benchmark
    reports met is asserted by test_interventions_gender_target_is_met (slow). Asserted as a bound the
    quick size reaches: (c) discover's subnetwork lowers TargetKG top-1 at least 0.5 more than random
    subnetworks removing as many weights per matrix (0.00 vs 0.82 measured)."""
    results = interventions.main(["--quick"])
    out = capsys.readouterr().out
    for name in ("agreement", "gender"):
        table = results[name]["table"]
        assert set(table.method) == {"hard_concrete", "reinforce", "integrated_gradients", "grad_x_activation",
                                     "activation", "random"}
        for size, rows in table.groupby("size"):
            assert (rows.n_units == rows[rows.method == "hard_concrete"].n_units.iloc[0]).all()
        assert set(results[name]["pareto"].method) == {"hard_concrete", "reinforce"}
    knowledge = results["knowledge"]["table"].set_index("method").target_effect
    assert list(knowledge.index) == ["discover", "weight_magnitude", "grad_x_weight", "random"]
    assert knowledge["random"] - knowledge["discover"] >= 0.5
    assert out.count("meets") + out.count("MISSES") == 3 and "(c) knowledge suppression" in out


@pytest.mark.slow  # gender only: two budgets x six methods, searches of 150 steps: about 55 s
def test_interventions_gender_target_is_met(capsys):
    """The target the benchmark reports met: at the 100-unit budget Hard Concrete shrinks the gender gap
    by >= 80% with LM perplexity within 5%, where random units of the same count leave it (mean
    ablation, as in docs/interventions.md). 150 steps (the benchmark's default is 700) reach it: 0.335
    -> 0.045 with 81 units, +2.0%; random 0.336. The 20-unit budget is reported missed: not asserted."""
    table = interventions.main(["--only", "b", "--steps", "150", "--ablation", "mean"])["gender"]["table"]
    out = capsys.readouterr().out
    budget = table["size"].max()
    rows = table[table["size"] == budget].set_index("method")
    original = rows.target_original.iloc[0]
    found = rows.loc["hard_concrete"]
    assert found.target_effect <= interventions.GOALS["gender"][1](original) and found.lm_damage <= 0.05
    assert rows.target_effect["random"] > 0.8 * original
    verdict = next(line for line in out.splitlines() if f"budget {budget} units): Hard Concrete" in line)
    assert ": meets;" in verdict


def test_bridge_benchmark_quick(capsys):
    row = bridge_benchmark.main(["--quick", "--repeats", "1"])
    assert row["jaccard"] == 1.0 and row["crossed_rel_diff"] < 1e-4  # a few steps: float rounding cannot diverge yet
    assert row["hooked_step_s"] > 0 and row["bridge_step_s"] > 0 and math.isfinite(row["step_ratio"])
    assert "ratio bridge/hooked" in capsys.readouterr().out
