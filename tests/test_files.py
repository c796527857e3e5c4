"""Atomic result folders: a crash at any moment leaves the complete old result or the complete new one."""

import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch

import kcs_tl.files as files
from kcs_tl import Subnetwork
from kcs_tl.adapters import fingerprint, hook_site
from kcs_tl.files import MARKER, check_writable, is_temporary, result_folder

from conftest import tiny_model


def subnetwork(model, *bits):
    site = hook_site(model, 1, "attn.hook_z")
    return Subnetwork({site.address: torch.tensor(bits, dtype=torch.bool)}, {site.address: site},
                      fingerprint(model))


def bits(sub) -> list[bool]:
    return sub.masks["blocks.1.attn.hook_z"].tolist()


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_result_folder_puts_a_complete_folder_in_place_with_usual_permissions(tmp_path, umask_022):
    out = tmp_path / "runs" / "a"
    with result_folder(out) as tmp:
        assert is_temporary(tmp) and not out.exists()
        (tmp / "table.csv").write_text("x\n1\n")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "data.txt").write_text("y")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "sub", "table.csv"]
    assert [p.name for p in out.parent.iterdir()] == ["a"]  # no temporaries left
    for p in [out, *out.rglob("*")]:
        assert stat.S_IMODE(p.stat().st_mode) == (0o755 if p.is_dir() else 0o644), p
    model = tiny_model()
    subnetwork(model, 1, 0, 0, 1).save(tmp_path / "s")
    for p in [tmp_path / "s", *(tmp_path / "s").iterdir()]:
        assert stat.S_IMODE(p.stat().st_mode) == (0o755 if p.is_dir() else 0o644), p


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux-only")
def test_renameat2_exchange_swaps_two_folders_here(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "f").write_text("A")
    (tmp_path / "b" / "f").write_text("B")
    assert files._exchange(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "a" / "f").read_text() == "B" and (tmp_path / "b" / "f").read_text() == "A"


def test_overwrite_replaces_only_folders_kcs_tl_wrote(tmp_path):
    model = tiny_model()
    old, new = subnetwork(model, 1, 0, 0, 0), subnetwork(model, 0, 1, 1, 0)
    old.save(tmp_path / "run")
    with pytest.raises(FileExistsError, match="already holds a result.*overwrite=True"):
        new.save(tmp_path / "run")
    new.save(tmp_path / "run", overwrite=True)
    assert bits(Subnetwork.load(tmp_path / "run")) == bits(new)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="did not write"):
        new.save(mine, overwrite=True)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    (tmp_path / "empty").mkdir()
    new.save(tmp_path / "empty")  # an empty folder is fine
    assert bits(Subnetwork.load(tmp_path / "empty")) == bits(new)


def test_an_exception_while_writing_changes_nothing(tmp_path):
    model = tiny_model()
    subnetwork(model, 1, 0, 0, 0).save(tmp_path / "run")
    with pytest.raises(RuntimeError, match="boom"):
        with result_folder(tmp_path / "run", overwrite=True) as tmp:
            (tmp / "half.csv").write_text("x")
            raise RuntimeError("boom")
    assert bits(Subnetwork.load(tmp_path / "run")) == [True, False, False, False]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


# Every os-level step a save takes; a kill can fall between any two of them.
STEPS = ("mkdir", "rmdir", "rename", "replace", "unlink", "chmod", "fsync", "open", "close")


class Recorder:
    """Wraps the os-level steps: before each, snapshots the folder (as a kill there would leave it),
    or raises at step number ``fail_at`` (a failure there)."""

    def __init__(self, monkeypatch, root, snapshots=None, fail_at=None):
        self.root, self.snapshots, self.fail_at, self.count, self.busy = root, snapshots, fail_at, 0, False
        for name in STEPS:
            monkeypatch.setattr(os, name, self.wrap(name, getattr(os, name)))
        monkeypatch.setattr(files, "_exchange", self.wrap("renameat2", files._exchange))

    def wrap(self, name, fn):
        def step(*args, **kwargs):
            if not self.busy:
                self.busy = True
                try:
                    self.count += 1
                    if self.snapshots is not None:
                        snap = self.snapshots / f"{self.count:03d}-{name}"
                        shutil.copytree(self.root, snap, symlinks=True)
                    if self.count == self.fail_at:
                        raise OSError(f"injected failure at step {self.count} ({name})")
                finally:
                    self.busy = False
            return fn(*args, **kwargs)

        return step


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_a_save_killed_between_any_two_steps_leaves_the_old_or_the_new_result(tmp_path, monkeypatch, exchange):
    model = tiny_model()
    old, new = subnetwork(model, 1, 0, 0, 0), subnetwork(model, 0, 1, 1, 0)
    root, snapshots = tmp_path / "work", tmp_path / "snapshots"
    old.save(root / "run")
    if not exchange:
        monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    with monkeypatch.context() as m:
        recorder = Recorder(m, root, snapshots)
        new.save(root / "run", overwrite=True)
    assert recorder.count > 10
    monkeypatch.setattr(files, "_alive", lambda pid: False)  # the killed process is gone
    seen = []
    for snap in sorted(snapshots.iterdir()):
        loaded = bits(Subnetwork.load(snap / "run"))  # puts back a result a crash hid
        assert loaded in (bits(old), bits(new)), snap.name
        seen.append(loaded == bits(new))
        assert all(is_temporary(p) for p in snap.iterdir() if p.name != "run"), snap.name
        check_writable(snap / "run", overwrite=True)  # the next writer clears dead temporaries
        assert [p.name for p in snap.iterdir()] == ["run"], snap.name
    assert seen[0] is False and seen[-1] is True and seen == sorted(seen)  # old, then new, never back


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_a_save_failing_at_any_step_leaves_the_old_or_the_new_result(tmp_path, monkeypatch, exchange):
    model = tiny_model()
    old, new = subnetwork(model, 1, 0, 0, 0), subnetwork(model, 0, 1, 1, 0)
    root = tmp_path / "work"
    if not exchange:
        monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    n_steps = None
    for fail_at in range(1, 200):
        shutil.rmtree(root, ignore_errors=True)
        old.save(root / "run")
        with monkeypatch.context() as m:
            recorder = Recorder(m, root, fail_at=fail_at)
            try:
                new.save(root / "run", overwrite=True)
            except OSError as err:
                assert "injected failure" in str(err)
        assert bits(Subnetwork.load(root / "run")) in (bits(old), bits(new)), fail_at
        assert all(is_temporary(p) for p in root.iterdir() if p.name != "run"), fail_at
        if recorder.count < fail_at:  # the save took fewer steps: every step has failed once
            n_steps = recorder.count
            break
    assert n_steps and n_steps > 10


def test_leftover_temporaries_are_never_taken_for_results(tmp_path):
    model = tiny_model()
    subnetwork(model, 1, 0, 0, 0).save(tmp_path / "run")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".run.kcs_tl-tmp-{dead}@{files._host()}-abc123"
    shutil.copytree(tmp_path / "run", stale)
    assert is_temporary(stale) and not is_temporary(tmp_path / "run")
    with pytest.raises(ValueError, match="temporary folder of an interrupted write"):
        Subnetwork.load(stale)
    with pytest.raises(ValueError, match="temporary folder"):
        check_writable(stale, overwrite=True)
    check_writable(tmp_path / "run", overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


WRITER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("files", sys.argv[1])
files = importlib.util.module_from_spec(spec); spec.loader.exec_module(files)
i = 0
while True:
    i += 1
    with files.result_folder(sys.argv[2], overwrite=True) as tmp:
        for name in "abcdefgh":
            (tmp / name).write_text(str(i) * 1000)
    if i == 1:
        print("ready", flush=True)  # one complete result exists
"""


def test_a_really_killed_writer_leaves_a_complete_folder(tmp_path):
    out = tmp_path / "out"
    for delay in (0.3, 0.45, 0.6):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, files.__file__, str(out)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        files.existing_result(out)  # puts back a result a kill hid, drops dead temporaries
        contents = {p.name: p.read_text() for p in out.iterdir() if p.name != MARKER}
        assert sorted(contents) == list("abcdefgh") and (out / MARKER).is_file()
        assert len(set(contents.values())) == 1  # one write's files, never a mix
        assert [p.name for p in tmp_path.iterdir()] == ["out"]
