"""The docs are tested: every Python block of every page runs, every page is in the site, the site builds.

A page's ```python blocks run top to bottom in one namespace (one per page), in a
fresh temporary working folder, unless the last non-blank line before a block is
``<!-- not run: REASON -->`` (for GPU-only or downloaded-weights code, with the
reason shown to the reader). ``mkdocs build --strict`` runs when the docs extra is
installed (``pip install -e ".[docs]"``); ``.ci/run`` installs it in its docs lane.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import kcs_tl

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^\s`]*)")
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(?P<reason>\S.*?)\s*-->$")
DOCS_EXTRA = ("mkdocs", "material", "mkdocstrings_handlers.python", "mkdocs_jupyter")


@dataclass
class Block:
    """One fenced code block of a page."""

    line: int  # 1-based line of the opening fence
    language: str
    code: str
    not_run: str | None  # the reason, when marked ``<!-- not run: ... -->``


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, start = m["fence"], i
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip().startswith(fence)
                    and lines[j].strip().strip(fence[0]) == ""), None)
        if end is None:
            raise ValueError(f"{path.relative_to(ROOT)}:{i + 1}: code block never closed")
        before = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = NOT_RUN.match(before)
        code = "\n".join(line[len(m["indent"]):] for line in lines[start + 1 : end])
        found.append(Block(start + 1, m["info"].lower(), code, marker["reason"] if marker else None))
        i = end + 1
    return found


def pages() -> list[Path]:
    """Every Markdown page of docs/ (not following the demos/ link) and the README."""
    return sorted(p for p in DOCS.rglob("*.md") if not p.is_symlink()) + [ROOT / "README.md"]


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("page", pages(), ids=_id)
def test_page_code_runs(page: Path, tmp_path, monkeypatch):
    """Each ```python block runs, top to bottom, in one namespace per page, in a temporary folder."""
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"docs_page_{page.stem}"}
    for block in blocks(page):
        if block.language not in ("python", "py") or block.not_run:
            continue
        where = f"{_id(page)}:{block.line}"
        try:
            exec(compile(block.code, where, "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"the ```python block at {where} failed: {type(err).__name__}: {err}") from err


def test_not_run_markers_give_a_reason():
    """A block left out of the tests says why, and the marker only ever precedes a code block."""
    for page in pages():
        text = page.read_text(encoding="utf-8").splitlines()
        marked = {b.line for b in blocks(page) if b.not_run}
        for n, line in enumerate(text, 1):
            if "not run" in line and line.strip().startswith("<!--"):
                assert NOT_RUN.match(line.strip()), f"{_id(page)}:{n}: write `<!-- not run: REASON -->`"
                following = next(k for k in range(n, len(text) + 1) if k == len(text) or text[k].strip())
                assert following + 1 in marked, f"{_id(page)}:{n}: the not-run marker is not right before a code block"


def test_harness_reads_blocks_and_markers(tmp_path):
    """The extraction itself: languages, nested fences, indentation, markers."""
    page = tmp_path / "page.md"
    page.write_text("# t\n\n```python\nx = 1\n```\n\n<!-- not run: needs a GPU -->\n```python\ny = 2\n```\n"
                    "````markdown\n```python\nnot code\n```\n````\n\n- item\n\n  ```py\n  z = 3\n  ```\n")
    found = blocks(page)
    assert [(b.line, b.language, b.code, b.not_run) for b in found] == [
        (3, "python", "x = 1", None), (8, "python", "y = 2", "needs a GPU"),
        (11, "markdown", "```python\nnot code\n```", None), (19, "py", "z = 3", None)]


# -- the site --------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """mkdocs.yml with its tags (``!ENV``, ``!!python/name``) read as plain values."""


_Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
_Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)


def nav_files(nav) -> list[str]:
    """Every file named in an mkdocs nav (nested lists of ``title: file`` / ``title: [...]``)."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [f for item in nav for f in nav_files(item)]
    if isinstance(nav, dict):
        return [f for value in nav.values() for f in nav_files(value)]
    return []


def config() -> dict:
    return yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_Loader)


def test_every_page_and_notebook_is_in_the_nav():
    """A page or notebook missing from mkdocs.yml's nav would be built but unreachable."""
    listed = set(nav_files(config()["nav"]))
    missing = []
    for page in pages()[:-1]:
        rel = page.relative_to(DOCS).as_posix()
        if rel not in listed:
            missing.append(f"{_id(page)}: add `- <Title>: {rel}` to mkdocs.yml's nav "
                           f"({'under How-to:' if rel.startswith('howto/') else 'under Tutorials:'})")
    for notebook in sorted((ROOT / "demos").glob("*.ipynb")):
        rel = f"demos/{notebook.name}"
        if rel not in listed:
            missing.append(f"{rel}: add `- <Title>: {rel}` to mkdocs.yml's nav under Notebooks:")
    stale = sorted(f for f in listed if not (DOCS / f).exists())
    missing += [f"mkdocs.yml's nav lists {f}, which does not exist under docs/" for f in stale]
    assert not missing, "\n".join(missing)


@pytest.mark.skipif(any(importlib.util.find_spec(m.split(".")[0]) is None for m in DOCS_EXTRA),
                    reason='the docs extra is not installed (pip install -e ".[docs]")')
def test_site_builds_strictly(tmp_path):
    """``mkdocs build --strict`` passes (a warning fails it), and the reference shows every public name."""
    site = tmp_path / "site"
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"),
                          "-d", str(site)], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1", "KCS_TL_DOCS_EXECUTE": "false"})
    assert run.returncode == 0, f"mkdocs build --strict failed:\n{run.stdout}\n{run.stderr}"
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    absent = [name for name in kcs_tl.__all__ if f'id="kcs_tl.{name}"' not in api]
    assert not absent, f"the API reference lacks {absent}: give them docstrings or check docs/api.md"
    for notebook in (ROOT / "demos").glob("*.ipynb"):
        assert (site / "demos" / notebook.stem / "index.html").is_file(), f"demos/{notebook.name} was not rendered"
