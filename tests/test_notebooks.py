"""The demos/ notebooks: stored without outputs, and each runs top to bottom.

Execution uses nbclient with ``KCS_TL_QUICK=1`` (each notebook shortens its
searches when it sees it; the code path is the same), in a temporary working
folder. It is marked slow (a kernel per notebook, ~10-30 s each): ``.ci/run``'s
docs lane runs it with ``pytest -m slow tests/test_notebooks.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "demos").glob("*.ipynb"))


def _marked(path: Path):
    """A notebook whose metadata says ``kcs_tl.requires: smollm2`` carries that marker (conftest skips it
    when the real weights are not installed)."""
    needs = json.loads(path.read_text(encoding="utf-8"))["metadata"].get("kcs_tl", {}).get("requires")
    return pytest.param(path, marks=[getattr(pytest.mark, needs)] if needs else [], id=_id(path))


def _id(path: Path) -> str:
    return f"demos/{path.name}"


def test_there_are_notebooks():
    assert NOTEBOOKS, "demos/ has no notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_stored_without_outputs(path: Path):
    """Outputs belong to a run, not to the repository: no outputs, no execution counts."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    dirty = [i for i, c in enumerate(cells)
             if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, (f"{_id(path)}: cells {dirty} hold outputs; clear them "
                       f"(jupyter nbconvert --clear-output --inplace {_id(path)})")


@pytest.mark.slow
@pytest.mark.parametrize("path", [_marked(p) for p in NOTEBOOKS])
def test_runs_top_to_bottom(path: Path, tmp_path, monkeypatch):
    """Every cell runs without error on CPU with the short searches of KCS_TL_QUICK=1."""
    nbformat = pytest.importorskip("nbformat", reason='the docs extra is not installed (pip install -e ".[docs]")')
    nbclient = pytest.importorskip("nbclient", reason='the docs extra is not installed (pip install -e ".[docs]")')
    monkeypatch.setenv("KCS_TL_QUICK", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:
        raise AssertionError(f"{_id(path)} failed:\n{err}") from None
