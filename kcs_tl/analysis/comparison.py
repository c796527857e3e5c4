"""Does a subnetwork agree with activation patching? Rank and set agreement, beside random subnetworks.

For the components both cover (heads or neurons of the masked layers):

- ``spearman``: rank correlation of the component's fraction in the subnetwork with
  its absolute patching effect;
- ``roc_auc``: how well the absolute effect separates the components "in" the
  subnetwork from the others (0.5 = chance);
- ``precision@k`` / ``recall@k`` / ``jaccard@k``: overlap of patching's top-k
  components with the components "in" the subnetwork.

A component is "in" the subnetwork when its fraction exceeds the mean fraction of
its kind (denser than the subnetwork is on average; for head or neuron masks this is
simply membership). The same numbers for random subnetworks of the same size per
site (``kcs_tl.random_like``) are the baseline a real agreement must beat; their
members are as many of their densest components as the real subnetwork has members,
so the sets compared are of equal size.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from kcs_tl import validate
from kcs_tl.analysis.components import components
from kcs_tl.analysis.patching import PatchingResult
from kcs_tl.baselines.random import random_like
from kcs_tl.subnetwork import Subnetwork
from kcs_tl.validate import InputTypeError, InputValueError


def _ranks(x: np.ndarray) -> np.ndarray:
    return pd.Series(x).rank(method="average").to_numpy()


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (ties get average ranks); NaN when either side is constant."""
    ra, rb = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def roc_auc(labels: Sequence[bool], scores: Sequence[float]) -> float:
    """Area under the ROC curve of ``scores`` for ``labels`` (Mann-Whitney; ties count half); NaN if one class."""
    labels, scores = np.asarray(labels, bool), np.asarray(scores, float)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _ranks(scores)
    return float((r[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def overlap_at_k(members: Sequence[bool], scores: Sequence[float], ks: Sequence[int]) -> pd.DataFrame:
    """Precision, recall and Jaccard of the top-k ``scores`` against the set ``members``, one row per k.

    Ties at the k-th score are broken by position (a stable sort), so results are deterministic.
    """
    members, scores = np.asarray(members, bool), np.asarray(scores, float)
    order = np.argsort(-scores, kind="stable")
    n_members = int(members.sum())
    rows = []
    for k in ks:
        hits = int(members[order[:k]].sum())
        union = k + n_members - hits
        rows.append({"k": k, "precision": hits / k, "recall": hits / n_members if n_members else float("nan"),
                     "jaccard": hits / union if union else float("nan")})
    return pd.DataFrame(rows)


def default_ks(n: int) -> list[int]:
    """About ten k from 1 to ``n``, spaced geometrically."""
    return sorted({int(k) for k in np.unique(np.geomspace(1, n, num=min(n, 10)).round())})


def _members(table: pd.DataFrame, n: int | None = None) -> np.ndarray:
    """The components denser than their mean, or the ``n`` densest (ties broken by position)."""
    fraction = table["fraction"].to_numpy()
    if n is None:
        return fraction > fraction.mean()
    members = np.zeros(len(fraction), bool)
    members[np.argsort(-fraction, kind="stable")[:n]] = True
    return members


def _scores(table: pd.DataFrame, effect: pd.Series, ks: Sequence[int],
            n_members: int | None = None) -> dict[tuple[str, int | None], float]:
    members = _members(table, n_members)
    out = {("spearman", None): spearman(table["fraction"], effect),
           ("roc_auc", None): roc_auc(members, effect)}
    for row in overlap_at_k(members, effect, ks).itertuples():
        out |= {(m, row.k): getattr(row, m) for m in ("precision", "recall", "jaccard")}
    return out


@dataclass
class Comparison:
    """``table``: one row per (metric, k): the subnetwork's value, the random subnetworks' mean and std."""

    table: pd.DataFrame
    kind: str
    n_components: int
    n_members: int
    n_random: int
    patching: str

    def value(self, metric: str, k: int | None = None, source: str = "subnetwork") -> float:
        t = self.table
        rows = t[(t.metric == metric) & ((t.k.isna()) if k is None else (t.k == k))]
        if rows.empty:
            raise InputValueError(f"no {metric!r} at k={k}; metrics: {sorted(t.metric.unique())}, ks: "
                                  f"{sorted(t.k.dropna().astype(int).unique())}")
        return float(rows[source].iloc[0])

    def summary(self) -> pd.DataFrame:
        """Spearman, ROC AUC, precision@k for a few top components (about a quarter, at most 10) and
        precision and Jaccard at k = number of members (each at the nearest k measured)."""
        ks = self.table.k.dropna().astype(int).unique()
        near = lambda n: int(ks[np.abs(ks - n).argmin()])  # noqa: E731
        small, k = near(max(1, min(10, self.n_components // 4))), near(self.n_members)
        rows = [("spearman", None), ("roc_auc", None), *([("precision", small)] if small != k else []),
                ("precision", k), ("jaccard", k)]
        return pd.DataFrame([{"metric": m if kk is None else f"{m}@{kk}",
                              "subnetwork": self.value(m, kk), "random": self.value(m, kk, "random"),
                              "random_std": self.value(m, kk, "random_std")} for m, kk in rows])

    def plot(self, metric: str = "jaccard", ax=None):
        """``metric`` against k for the subnetwork and the random subnetworks (mean +- std); returns the figure."""
        return plot_overlap(self, metric, ax)

    def __repr__(self) -> str:
        return (f"Comparison({self.kind}s: {self.n_components} components, {self.n_members} in the subnetwork, "
                f"vs {self.patching}; {self.n_random} random subnetworks)\n"
                + self.summary().to_string(index=False, float_format="{:.3f}".format))

    def _repr_html_(self) -> str:
        head = html.escape(repr(self).splitlines()[0])
        return f"<p><code>{head}</code></p>" + self.summary().to_html(index=False, float_format="{:.3f}".format)


def random_components(subnetwork: Subnetwork, n_random: int = 20, seed: int = 0) -> list[pd.DataFrame]:
    """Component tables of ``n_random`` random subnetworks of the same size per site (seeds ``seed`` ...)."""
    n_random = validate.integer("n_random", n_random, 0)
    seed = validate.integer("seed", seed, 0)
    return [components(random_like(subnetwork, seed + i)) for i in range(n_random)]


def compare(subnetwork: Subnetwork, patching: PatchingResult, ks: Sequence[int] | None = None,
            n_random: int = 20, seed: int = 0, randoms: list[pd.DataFrame] | None = None) -> Comparison:
    """Agreement of ``subnetwork`` with ``patching`` (head or neuron granularity), and of random ones.

    Only components present in both are compared (the patched components of the
    subnetwork's masked layers); patching scores are absolute effects. ``randoms``
    reuses ``random_components(subnetwork, n_random, seed)`` across several comparisons.
    """
    if not isinstance(subnetwork, Subnetwork):
        raise InputTypeError(f"subnetwork must be a Subnetwork, got {validate.given(subnetwork)}")
    if not isinstance(patching, PatchingResult):
        raise InputTypeError(f"patching must be a PatchingResult (kcs_tl.analysis.patch / attribute), "
                             f"got {validate.given(patching)}")
    kind = validate.choice("patching.granularity", patching.granularity, ("head", "neuron"))
    randoms = random_components(subnetwork, n_random, seed) if randoms is None else randoms
    n_random = len(randoms)

    def aligned(table: pd.DataFrame) -> pd.DataFrame:
        return table[table.kind == kind].merge(patching.table[["component", "effect"]], on="component")

    table = aligned(components(subnetwork))
    if table.empty:
        raise InputValueError(f"the subnetwork and the {kind} patching share no component: the subnetwork masks "
                              f"layers {sorted(set(s.layer for s in subnetwork.sites.values()))}, patching covers "
                              f"layers {sorted(patching.table.layer.unique())}")
    ks = default_ks(len(table)) if ks is None else [validate.integer(f"ks[{i}]", k, 1, len(table))
                                                    for i, k in enumerate(ks)]
    effect = table["effect"].abs().fillna(0)
    real = _scores(table, effect, ks)
    members = int(_members(table).sum())
    random_scores = [_scores(aligned(r), effect, ks, members) for r in randoms]
    rows = []
    for (metric, k), value in real.items():
        chance = np.array([r[metric, k] for r in random_scores], float)
        rows.append({"metric": metric, "k": k, "subnetwork": value,
                     "random": float(np.nanmean(chance)) if n_random else float("nan"),
                     "random_std": float(np.nanstd(chance)) if n_random else float("nan")})
    frame = pd.DataFrame(rows)
    frame["k"] = frame["k"].astype("Int64")
    return Comparison(frame, kind, len(table), members, n_random,
                      f"{patching.method} {patching.granularity} patching ({patching.metric}, {patching.corruption})")


def plot_overlap(comparison: Comparison, metric: str = "jaccard", ax=None):
    """Overlap ``metric`` (precision, recall or jaccard) against k: the subnetwork vs random ones."""
    import matplotlib.pyplot as plt

    validate.choice("metric", metric, ("precision", "recall", "jaccard"))
    t = comparison.table[comparison.table.metric == metric].sort_values("k")
    fig = ax.figure if ax is not None else plt.figure(figsize=(5, 3.2))
    ax = ax if ax is not None else fig.add_subplot()
    k = t.k.astype(int).to_numpy()
    ax.plot(k, t.subnetwork, "o-", label="subnetwork")
    ax.plot(k, t.random, "s--", color="grey", label=f"random (mean of {comparison.n_random})")
    ax.fill_between(k, t.random - t.random_std, t.random + t.random_std, color="grey", alpha=0.2)
    ax.set_xscale("log")
    ax.set_xlabel(f"k (top-k {comparison.kind}s by |patching effect|)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}@k vs {comparison.patching}", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
