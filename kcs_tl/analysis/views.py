"""circuitsvis views of what a subnetwork does, inline in Jupyter and in offline HTML.

- ``attention_view``: attention patterns of the heads whose patterns change most when
  the subnetwork is removed, original beside remaining (``circuitsvis.attention.attention_heads``);
- ``logprob_view``: per-token change of log-probability, remaining minus original,
  on target and control sentences (``circuitsvis.tokens.colored_tokens``);
- ``topk_view``: top activating tokens of the neurons most involved (``circuitsvis.topk_tokens``).

Each returns a ``View``. In a notebook it renders through circuitsvis; for a file,
``View.offline_html()`` gives the widgets without circuitsvis's JavaScript bundle,
which ``page_script()`` holds once per page (the bundle is about 1.3 MB).
"""

from __future__ import annotations

import functools
import html
from dataclasses import dataclass, field
from pathlib import Path

import circuitsvis
import numpy as np
import pandas as pd
import torch
from circuitsvis.attention import attention_heads
from circuitsvis.tokens import colored_tokens
from circuitsvis.topk_tokens import topk_tokens

from kcs_tl import validate
from kcs_tl.adapters import check_model
from kcs_tl.analysis.components import components
from kcs_tl.subnetwork import Subnetwork
from kcs_tl.validate import InputTypeError, InputValueError


@functools.cache
def _bundle() -> str:
    """circuitsvis's JavaScript bundle, as its ``render_local`` inlines it."""
    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    return path.read_text(encoding="utf-8").replace("</script>", "")


def page_script() -> str:
    """A ``<script>`` defining the global ``CircuitsVis`` that every ``offline_html`` widget calls."""
    return f"<script>{_bundle()}</script>"


@dataclass
class View:
    """A titled group of circuitsvis widgets, with an optional table of what was chosen and why."""

    title: str
    widgets: list  # circuitsvis RenderedHTML
    captions: list[str]
    table: pd.DataFrame | None = field(default=None)

    def offline_html(self) -> str:
        """The widgets for a page that holds ``page_script()`` once (no bundle, no CDN)."""
        return self._html([w.local_src.replace(_bundle(), "") for w in self.widgets])

    def _html(self, widgets: list[str]) -> str:
        table = "" if self.table is None else self.table.to_html(index=False, float_format="{:.4f}".format)
        body = "".join(f"<p>{html.escape(c)}</p><div class='kcs-widget'>{w}</div>"
                       for c, w in zip(self.captions, widgets))
        return f"<h3>{html.escape(self.title)}</h3>{table}{body}"

    def _repr_html_(self) -> str:
        return self._html([w._repr_html_() for w in self.widgets])


def _check(model, subnetwork, sentences, name: str) -> list[str]:
    check_model(model)
    if not isinstance(subnetwork, Subnetwork):
        raise InputTypeError(f"subnetwork must be a Subnetwork, got {validate.given(subnetwork)}")
    subnetwork.check_model(model)
    if isinstance(sentences, str) or not sentences or not all(isinstance(s, str) and s for s in sentences):
        raise InputValueError(f"{name} must be a non-empty list of non-empty strings, got {validate.given(sentences)}")
    return list(sentences)


@torch.no_grad()
def _patterns(model, tokens) -> torch.Tensor:
    """``[layer, head, query, key]`` attention patterns of one sentence."""
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    return torch.stack([cache["pattern", layer][0] for layer in range(model.cfg.n_layers)]).cpu()


def attention_view(model, subnetwork: Subnetwork, sentences: list[str], n_heads: int = 4,
                   max_sentences: int = 3) -> View:
    """Patterns of the ``n_heads`` heads changed most (mean |pattern difference| over ``sentences``),
    original and remaining side by side, for the first ``max_sentences`` sentences."""
    sentences = _check(model, subnetwork, sentences, "sentences")
    n_heads = validate.integer("n_heads", n_heads, 1, model.cfg.n_layers * model.cfg.n_heads)
    max_sentences = validate.integer("max_sentences", max_sentences, 1)
    tokens = [model.to_tokens(s) for s in sentences]
    original = [_patterns(model, t) for t in tokens]
    with subnetwork.removed(model):
        remaining = [_patterns(model, t) for t in tokens]
    change = torch.stack([(a - b).abs().sum(-1).mean(-1) for a, b in zip(original, remaining)]).mean(0)
    top = change.flatten().topk(n_heads).indices.tolist()
    heads = [divmod(i, model.cfg.n_heads) for i in top]
    table = pd.DataFrame([{"head": f"L{layer}H{h}", "mean_abs_change": float(change[layer, h])}
                          for layer, h in heads])
    widgets, captions = [], []
    for s, t, a, b in list(zip(sentences, tokens, original, remaining))[:max_sentences]:
        stacked = torch.stack([x[layer, h] for layer, h in heads for x in (a, b)])
        names = [f"L{layer}H{h} {which}" for layer, h in heads for which in ("original", "remaining")]
        widgets.append(attention_heads(stacked, model.to_str_tokens(t[0]), attention_head_names=names))
        captions.append(repr(s))
    return View("Attention of the heads the subnetwork changes most (original vs remaining)", widgets,
                captions, table)


@torch.no_grad()
def _token_logprobs(model, sentence: str) -> tuple[list[str], np.ndarray]:
    tokens = model.to_tokens(sentence)
    logp = model(tokens).float().log_softmax(-1)[0, :-1].gather(-1, tokens[0, 1:, None])[:, 0]
    return model.to_str_tokens(tokens[0])[1:], logp.cpu().numpy()


def logprob_view(model, subnetwork: Subnetwork, sets: dict[str, list[str]]) -> View:
    """Per token of each set's sentences: log p(token | prefix), remaining minus original
    (negative: the remaining model finds the token less likely)."""
    check_model(model)
    if not isinstance(sets, dict) or not sets:
        raise InputTypeError(f"sets must be a non-empty dict name -> list of sentences, got {validate.given(sets)}")
    sets = {name: _check(model, subnetwork, s, f"sets[{name!r}]") for name, s in sets.items()}
    widgets, captions, rows = [], [], []
    for name, sentences in sets.items():
        original = [_token_logprobs(model, s) for s in sentences]
        with subnetwork.removed(model):
            remaining = [_token_logprobs(model, s) for s in sentences]
        tokens, values = [], []
        for (toks, a), (_, b) in zip(original, remaining):
            tokens += [*toks, "\n"]
            values += [*(b - a).tolist(), 0.0]
        widgets.append(colored_tokens(tokens, values))
        body = np.concatenate([b - a for (_, a), (_, b) in zip(original, remaining)])
        captions.append(f"{name}: mean change {body.mean():+.3f} nats per token, largest drop {body.min():+.3f}")
        rows.append({"set": name, "sentences": len(sentences), "mean_change": float(body.mean()),
                     "min_change": float(body.min())})
    return View("Change of log-probability per token (remaining minus original)", widgets, captions,
                pd.DataFrame(rows))


@torch.no_grad()
def topk_view(model, subnetwork: Subnetwork, sentences: list[str], n_neurons: int = 8, k: int = 5) -> View:
    """Top and bottom activating tokens over ``sentences`` (original model) of the ``n_neurons``
    neurons per masked layer with the largest fraction in the subnetwork."""
    sentences = _check(model, subnetwork, sentences, "sentences")
    n_neurons = validate.integer("n_neurons", n_neurons, 1, model.cfg.d_mlp)
    k = validate.integer("k", k, 1)
    table = components(subnetwork)
    table = table[table.kind == "neuron"]
    if table.empty:
        raise InputValueError("this subnetwork masks no MLP neuron, so it has no neurons to show")
    chosen = {layer: rows.nlargest(n_neurons, "fraction") for layer, rows in table.groupby("layer")}
    tokens, acts = [], []
    for s in sentences:
        t = model.to_tokens(s)
        _, cache = model.run_with_cache(t, names_filter=lambda n: n.endswith("mlp.hook_post"))
        tokens.append(model.to_str_tokens(t[0]))
        acts.append(np.stack([cache["post", layer][0][:, rows["index"].tolist()].float().cpu().numpy()
                              for layer, rows in chosen.items()]))
    widget = topk_tokens(tokens, acts, max_k=k, first_dimension_name="Layer", third_dimension_name="Neuron",
                         first_dimension_labels=[f"L{layer}" for layer in chosen])
    order = "; ".join(f"L{layer}: {rows['index'].tolist()}" for layer, rows in chosen.items())
    return View("Top activating tokens of the neurons most involved", [widget],
                [f"Neuron columns, in order, are neurons {order}"],
                pd.concat(chosen.values())[["component", "fraction"]])
