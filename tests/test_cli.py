"""The kcs-tl command, end to end on the built-in model with tiny settings."""

import json
import subprocess
import sys

import pytest

from kcs_tl.cli import main
from kcs_tl.subnetwork import Subnetwork

TINY = ["--steps", "8"]


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"eval_every": 4, "kg_batch_size": 16, "lm_batch_size": 2, "progress": False}))
    return ["--config", str(path)]


def test_demo_runs_end_to_end_and_refuses_to_overwrite(tmp_path, tiny_config, capsys):
    out = tmp_path / "demo"
    main(["demo", "--out", str(out), "--no-report", *TINY, *tiny_config])  # tests/test_report.py: the report
    printed = capsys.readouterr().out
    assert "TargetKG" in printed and "criteria:" in printed and "random" in printed
    assert {p.name for p in out.iterdir()} == {"subnetwork", "history.csv", "evaluation.csv", "target.jsonl",
                                               "control.jsonl", "run.json", ".kcs_tl"}
    Subnetwork.load(out / "subnetwork")
    with pytest.raises(SystemExit) as info:
        main(["demo", "--out", str(out), *TINY, *tiny_config])
    assert info.value.code == 2 and "already holds a result" in capsys.readouterr().err
    main(["demo", "--out", str(out), "--overwrite", "--no-report", *TINY, *tiny_config])


def test_discover_and_evaluate_on_user_files(tmp_path, tiny_config, builtin, capsys):
    z, task = builtin
    task.target.save(tmp_path / "target.jsonl")
    task.control.save(tmp_path / "control.jsonl")
    (tmp_path / "lm.txt").write_text("\n".join(z.lm_text["validation"][:60]))
    files = ["--target", str(tmp_path / "target.jsonl"), "--control", str(tmp_path / "control.jsonl"),
             "--lm", str(tmp_path / "lm.txt")]
    main(["discover", *files, "--out", str(tmp_path / "run"), "--no-report", *TINY, *tiny_config])
    main(["evaluate", *files, "--subnetwork", str(tmp_path / "run" / "subnetwork"), "--n-random", "1",
          "--out", str(tmp_path / "eval")])
    assert "Evaluation(sparsity" in capsys.readouterr().out
    assert (tmp_path / "eval" / "evaluation.csv").is_file()


def test_bad_arguments_get_clear_messages(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["discover", "--target", "nowhere.jsonl", "--control", "wordnet:control", "--lm", "x.txt",
              "--out", str(tmp_path / "o")])
    assert info.value.code == 2 and "neither a file nor wordnet:ROOT" in capsys.readouterr().err
    (tmp_path / "c.json").write_text('{"stpes": 3}')
    with pytest.raises(SystemExit) as info:
        main(["demo", "--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "d")])
    assert info.value.code == 2 and "unknown config fields ['stpes'] (did you mean ['steps']?)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["demo", "--help"])
    assert info.value.code == 0


@pytest.mark.parametrize("bug, error", [("len(None)", "TypeError"), ("int('x')", "ValueError")])
def test_an_internal_error_in_a_verb_exits_1_with_its_traceback(bug, error):
    """Only a bad input (kcs_tl.InputError) or an OSError gets status 2 and one line; a bug raising a
    built-in TypeError or ValueError keeps its traceback and exits with status 1 (Python's own)."""
    code = (f"import kcs_tl.cli as cli, kcs_tl.cli.report as verb\ndef command(args):\n    {bug}\n"
            "verb.command = command\ncli.main(['report', 'anywhere'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("Traceback") and ", in command\n" in done.stderr
    assert done.stderr.splitlines()[-1].startswith(f"{error}: ") and "kcs-tl report: error" not in done.stderr
