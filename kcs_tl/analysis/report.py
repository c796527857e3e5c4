"""One self-contained HTML file about a subnetwork: it opens with no network.

``report`` gathers the evaluation table, sparsity by layer and module, the
components table, the comparison with head and neuron patching (each beside random
subnetworks of the same size), heat maps, the overlap-vs-k plot and the circuitsvis
views. circuitsvis's JavaScript bundle is embedded once; figures are inline PNGs.
``write_report`` is the page writer underneath (also used for plain summaries).
"""

from __future__ import annotations

import base64
import html
import io
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from kcs_tl import validate
from kcs_tl.adapters import check_model
from kcs_tl.analysis.comparison import Comparison, compare, random_components
from kcs_tl.analysis.components import components
from kcs_tl.analysis.heatmaps import heatmaps
from kcs_tl.analysis.patching import PatchingResult, attribute, patch
from kcs_tl.analysis.prompts import knowledge_prompts
from kcs_tl.analysis.views import attention_view, logprob_view, page_script, topk_view
from kcs_tl.data.kg import KnowledgeGraph
from kcs_tl.data.templates import fill
from kcs_tl.files import atomic_file
from kcs_tl.subnetwork import Subnetwork
from kcs_tl.validate import InputTypeError

_STYLE = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:75em}"
          "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;"
          "text-align:right}th{background:#f3f3f3}img{max-width:100%}")


def write_report(path: str | Path, title: str, sections: dict[str, str], head: str = "") -> Path:
    """Write ``sections`` (heading -> HTML fragment, e.g. an object's ``_repr_html_()``) to ``path``,
    atomically; ``head`` goes into the page's ``<head>`` (e.g. a script the fragments need)."""
    body = "".join(f"<h2>{html.escape(h)}</h2>{fragment}" for h, fragment in sections.items())
    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                       f"<style>{_STYLE}</style>{head}</head><body><h1>{html.escape(title)}</h1>{body}"
                       "</body></html>", encoding="utf-8")
    return path


def figure_html(fig) -> str:
    """A matplotlib figure as an inline PNG ``<img>`` (closed afterwards)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return f"<img src='data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}'>"


def _sentences(graph: KnowledgeGraph, n: int) -> list[str]:
    return ["".join(fill(graph.templates[t.relation][0], t.head, t.tail)) for t in list(graph)[:n]]


@dataclass
class Report:
    """What ``report`` wrote and measured: the file, patching results, comparisons, timings."""

    path: Path
    patching: dict[str, PatchingResult]
    comparisons: dict[str, Comparison]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size

    def table(self) -> pd.DataFrame:
        """The comparisons' summaries in one table (one row per comparison and metric)."""
        return pd.concat([c.summary().assign(against=name) for name, c in self.comparisons.items()],
                         ignore_index=True)[["against", "metric", "subnetwork", "random", "random_std"]]

    def __repr__(self) -> str:
        timings = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        return (f"Report({self.path}, {self.size_bytes / 2**20:.2f} MB; {timings})\n"
                + self.table().to_string(index=False, float_format="{:.3f}".format))

    def _repr_html_(self) -> str:
        return (f"<p>Report <code>{html.escape(str(self.path))}</code> ({self.size_bytes / 2**20:.2f} MB)</p>"
                + self.table().to_html(index=False, float_format="{:.3f}".format))


def report(model, subnetwork: Subnetwork, target: KnowledgeGraph, path: str | Path,
           control: KnowledgeGraph | None = None, evaluation=None, title: str | None = None,
           metric: str = "logprob", corruption: str = "swap", n_random: int = 20, seed: int = 0,
           max_memory_mb: float = 256.0) -> Report:
    """Analyse ``subnetwork`` on the facts of ``target`` and write everything to the HTML file ``path``.

    Patching (exact and attribution, heads of every layer and neurons of the masked
    layers) runs on ``knowledge_prompts(model, target, pool=target + control)``.
    ``evaluation`` (a ``kcs_tl.Evaluation``) adds the evaluation table.
    """
    check_model(model)
    if not isinstance(subnetwork, Subnetwork):
        raise InputTypeError(f"subnetwork must be a Subnetwork, got {validate.given(subnetwork)}")
    subnetwork.check_model(model)
    for name, graph in (("target", target), ("control", control)):
        if graph is not None and not isinstance(graph, KnowledgeGraph):
            raise InputTypeError(f"{name} must be a KnowledgeGraph, got {validate.given(graph)}")
    path = Path(validate.path("path", path))
    if not path.parent.is_dir():
        raise FileNotFoundError(f"path {path}: folder {path.parent} does not exist")
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    table = components(subnetwork)
    prompts = knowledge_prompts(model, target, [*target, *(control or [])], seed=seed)
    results: dict[str, PatchingResult] = {}
    mlp_layers = sorted(table[table.kind == "neuron"].layer.unique().tolist())
    for kind, layers in (("head", None), ("neuron", mlp_layers or None)):
        if kind == "neuron" and not mlp_layers:
            continue
        results[kind] = patch(model, prompts, kind, metric, corruption, layers, max_memory_mb)
        results[f"{kind} (attribution)"] = attribute(model, prompts, kind, metric, corruption, layers)
        seconds[f"{kind} patching"] = results[kind].seconds
        seconds[f"{kind} attribution"] = results[f"{kind} (attribution)"].seconds
    randoms = random_components(subnetwork, n_random, seed)
    comparisons = {name: compare(subnetwork, r, randoms=randoms) for name, r in results.items()
                   if r.granularity in set(table.kind)}
    views = [attention_view(model, subnetwork, _sentences(target, 3)),
             logprob_view(model, subnetwork, {"target": _sentences(target, 6),
                                              **({"control": _sentences(control, 6)} if control else {})})]
    if "neuron" in set(table.kind):
        views.append(topk_view(model, subnetwork, _sentences(target, 8) + (_sentences(control, 8) if control else [])))
    sections = {}
    if evaluation is not None:
        sections["Evaluation (original vs remaining vs random subnetworks of the same size)"] = evaluation._repr_html_()
    sections["Sparsity by layer and module"] = (subnetwork.stats("module").to_html(index=False)
                                                + subnetwork.stats("site").to_html(index=False))
    top = table.sort_values("fraction", ascending=False).groupby("kind").head(15)
    sections["Components (the 15 densest heads and neurons)"] = (
        f"<p>{len(table)} components; full table: <code>kcs_tl.analysis.components(subnetwork)</code></p>"
        + top.to_html(index=False, float_format="{:.4f}".format))
    sections["Knowledge prompts"] = prompts._repr_html_()
    sections["Comparison with activation patching (beside random subnetworks of the same size)"] = (
        "".join(f"<h3>vs {html.escape(name)}</h3>{c._repr_html_()}" for name, c in comparisons.items())
        + "".join(figure_html(c.plot()) for name, c in comparisons.items() if "attribution" not in name))
    sections["Patching results"] = "".join(r._repr_html_() for r in results.values())
    sections["Subnetwork density beside patching effect"] = figure_html(
        heatmaps(table, {k: results[k] for k in ("head", "neuron") if k in results}))
    sections["Views"] = "".join(v.offline_html() for v in views)
    seconds["total"] = time.perf_counter() - start
    title = title or f"Subnetwork report: {target.name or 'TargetKG'}"
    write_report(path, title, sections, head=page_script())
    return Report(path, results, comparisons, seconds)
