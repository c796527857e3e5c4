"""The benchmark scripts run end to end at --quick sizes and report sane fields.

No timing thresholds: the machine is shared and noisy, so only the presence,
sign and finiteness of the numbers are checked. They run on one torch thread:
on a shared 2-core machine the default 2 threads made the built-in case take
minutes instead of seconds (thread oversubscription).
"""

import math
import sys
from pathlib import Path

import pytest
import torch

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
    for ratio in step_cost.TARGETS:
        assert ratio in out
    assert "meets" in out or "MISSES" in out


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
    table = discovery.main(["--quick"])
    out = capsys.readouterr().out
    assert len(table) == 1 and {"target_top1", "control_ratio", "sparsity", "random_target_top1"} <= set(table)
    assert 0 <= table.sparsity.iloc[0] <= 1 and "runs meeting all criteria" in out and "held-out" in out
    table = convergence.main(["--quick"])
    assert list(table.schedule) == ["default"] and "target: success within 4000 steps" in capsys.readouterr().out


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
    assert all(r["step_s"] > 0 and r["prepare_s"] > 0 and r["peak_rss_gib"] > 0 for r in rows)
    assert "meets" in capsys.readouterr().out


def test_interventions_quick(capsys):
    results = interventions.main(["--quick"])
    out = capsys.readouterr().out
    for name in ("agreement", "gender"):
        table = results[name]["table"]
        assert set(table.method) == {"hard_concrete", "reinforce", "integrated_gradients", "grad_x_activation",
                                     "activation", "random"}
        for size, rows in table.groupby("size"):
            assert (rows.n_units == rows[rows.method == "hard_concrete"].n_units.iloc[0]).all()
        assert set(results[name]["pareto"].method) == {"hard_concrete", "reinforce"}
    assert list(results["knowledge"]["table"].method) == ["discover", "weight_magnitude", "grad_x_weight", "random"]
    assert out.count("meets") + out.count("MISSES") == 3 and "(c) knowledge suppression" in out


def test_bridge_benchmark_quick(capsys):
    row = bridge_benchmark.main(["--quick", "--repeats", "1"])
    assert row["jaccard"] == 1.0 and row["crossed_rel_diff"] < 1e-4  # a few steps: float rounding cannot diverge yet
    assert row["hooked_step_s"] > 0 and row["bridge_step_s"] > 0 and math.isfinite(row["step_ratio"])
    assert "ratio bridge/hooked" in capsys.readouterr().out
