"""A self-contained HTML summary of a search and its evaluation (no CDN, opens offline)."""

from __future__ import annotations

import html
from pathlib import Path

_STYLE = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}"
          "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;"
          "text-align:right}th{background:#f3f3f3}")


def write_report(path: str | Path, title: str, sections: dict[str, str]) -> Path:
    """Write ``sections`` (heading -> HTML fragment, e.g. an object's ``_repr_html_()``) to ``path``."""
    body = "".join(f"<h2>{html.escape(h)}</h2>{fragment}" for h, fragment in sections.items())
    path = Path(path)
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                    f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>",
                    encoding="utf-8")
    return path
