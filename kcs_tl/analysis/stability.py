"""Seed stability: are the subnetworks found with different seeds the same subnetwork?

For every pair of subnetworks (one per seed) the Jaccard overlap |A & B| / |A | B|
is measured per module and overall, next to the overlap expected by chance for
random subnetworks of the same sizes. A random subnetwork of ``a`` of a site's
``n`` units (what ``random_like`` draws) meets one of ``b`` units in ``a * b / n``
units on average, so the chance overlap of a group of sites is
``sum(a b / n) / sum(a + b - a b / n)``. The intersection of all seeds and the
k-of-n majority subnetwork are then evaluated like any subnetwork: if they still
make the model forget, the seeds agree on what matters.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Sequence

import pandas as pd

from kcs_tl import validate
from kcs_tl.evaluation import Criteria, Evaluation, evaluate
from kcs_tl.subnetwork import Subnetwork, majority
from kcs_tl.validate import InputTypeError, InputValueError

GROUPINGS = ("site", "module", "layer")
_KEYS = {"site": ["address"], "module": ["layer", "module"], "layer": ["layer"]}


def chance_jaccard(a: int, b: int, n: int) -> float:
    """Expected Jaccard overlap of two random subsets of sizes ``a`` and ``b`` of ``n`` units.

    The ratio of the expected intersection and union (exact as ``n`` grows; the
    subnetworks here cover thousands of weights). 1.0 when both are empty.
    """
    inter = a * b / n if n else 0.0
    union = a + b - inter
    return 1.0 if union == 0 else inter / union


def _pair_counts(first: Subnetwork, second: Subnetwork) -> pd.DataFrame:
    """Per site: both sizes, intersection, union and the intersection expected by chance."""
    first._check_same_sites(second)
    rows = []
    for address, site in first.sites.items():
        a, b = first.expanded(address), second.expanded(address)
        n, size_a, size_b = math.prod(site.full_shape), int(a.sum()), int(b.sum())
        rows.append({"address": address, "layer": site.layer, "module": site.module, "total": n,
                     "size_a": size_a, "size_b": size_b, "intersection": int((a & b).sum()),
                     "union": int((a | b).sum()), "chance_intersection": size_a * size_b / n})
    return pd.DataFrame(rows)


def _overlap(counts: pd.DataFrame) -> pd.Series:
    """Jaccard and chance Jaccard of summed counts (a group of sites)."""
    inter, union = counts["intersection"].sum(), counts["union"].sum()
    chance_inter = counts["chance_intersection"].sum()
    chance_union = counts["size_a"].sum() + counts["size_b"].sum() - chance_inter
    return pd.Series({"total": counts["total"].sum(), "size_a": counts["size_a"].sum(),
                      "size_b": counts["size_b"].sum(),
                      "jaccard": 1.0 if union == 0 else inter / union,
                      "chance": 1.0 if chance_union == 0 else chance_inter / chance_union})


def pairwise_jaccard(subnetworks: Sequence[Subnetwork], names: Sequence | None = None,
                     by: str = "module") -> pd.DataFrame:
    """One row per pair of subnetworks and group (``by`` site, module or layer, plus ``overall``).

    Columns: ``a``, ``b`` (the pair's names), the group's keys, ``total`` units,
    both sizes, ``jaccard`` and ``chance`` (the expected Jaccard of random
    subnetworks with the same number of units per site).
    """
    subnetworks = _subnetworks(subnetworks, least=2)
    by = validate.choice("by", by, GROUPINGS)
    names = list(range(len(subnetworks))) if names is None else list(names)
    if len(names) != len(subnetworks):
        raise InputValueError(f"names has {len(names)} entries for {len(subnetworks)} subnetworks")
    keys = _KEYS[by]
    frames = []
    for (i, first), (j, second) in itertools.combinations(enumerate(subnetworks), 2):
        counts = _pair_counts(first, second)
        groups = counts.groupby(keys, sort=False)[list(counts.columns)].apply(_overlap).reset_index()
        overall = _overlap(counts).to_frame().T.assign(**{k: "overall" for k in keys})
        frame = pd.concat([groups, overall], ignore_index=True)
        frame.insert(0, "b", names[j])
        frame.insert(0, "a", names[i])
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True)
    return out.astype({c: "int64" for c in ("total", "size_a", "size_b")} | {k: str for k in keys})


def _subnetworks(subnetworks, least: int) -> list[Subnetwork]:
    if isinstance(subnetworks, Subnetwork) or not isinstance(subnetworks, Sequence):
        raise InputTypeError(f"subnetworks must be a list of Subnetworks, got {validate.given(subnetworks)}")
    bad = [i for i, s in enumerate(subnetworks) if not isinstance(s, Subnetwork)]
    if bad:
        raise InputTypeError(f"subnetworks[{bad[0]}] is not a Subnetwork, got {validate.given(subnetworks[bad[0]])}")
    if len(subnetworks) < least:
        raise InputValueError(f"seed stability needs at least {least} subnetworks, got {len(subnetworks)}")
    return list(subnetworks)


@dataclass
class SeedStability:
    """Overlap of subnetworks found with different seeds, and how their common part evaluates.

    ``overlap``: per group (and ``overall``) the mean over seed pairs of Jaccard and
    chance Jaccard, and their ratio. ``pairs``: every pair's numbers.
    ``evaluations`` (when a model and data were given): ``"intersection"`` and
    ``"majority"`` (units in at least ``k`` of the ``n`` subnetworks).
    """

    overlap: pd.DataFrame
    pairs: pd.DataFrame
    intersection: Subnetwork
    majority: Subnetwork
    k: int
    n: int
    evaluations: dict[str, Evaluation] = field(default_factory=dict)
    criteria: Criteria = field(default_factory=Criteria)

    @property
    def jaccard(self) -> float:
        """Mean Jaccard between seeds over every masked unit."""
        return float(self.overlap.loc[self.overlap.iloc[:, 0] == "overall", "jaccard"].iloc[0])

    @property
    def chance(self) -> float:
        """The mean Jaccard random subnetworks of the same sizes would have."""
        return float(self.overlap.loc[self.overlap.iloc[:, 0] == "overall", "chance"].iloc[0])

    def summary(self) -> dict:
        """One flat row: overall overlap, and each combined subnetwork's size and evaluation."""
        row = {"n_seeds": self.n, "k": self.k, "jaccard": self.jaccard, "chance": self.chance,
               "jaccard_over_chance": self.jaccard / self.chance if self.chance else math.inf}
        for name, sub in (("intersection", self.intersection), ("majority", self.majority)):
            row[f"{name}_size"] = sub.n_in_subnetwork()
            if name in self.evaluations:
                row |= {f"{name}_{k}": v for k, v in headline(self.evaluations[name], self.criteria).items()
                        if k != "sparsity"}
        return row

    def __repr__(self) -> str:
        s = self.summary()
        lines = [f"SeedStability({self.n} subnetworks: mean Jaccard {s['jaccard']:.4f} vs {s['chance']:.4f} "
                 f"by chance; intersection {s['intersection_size']:,} units, {self.k}-of-{self.n} majority "
                 f"{s['majority_size']:,} units)", self.overlap.to_string(index=False, float_format="{:.4f}".format)]
        for name, ev in self.evaluations.items():
            lines.append(f"{name}: {ev.criteria_line(self.criteria)}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        evals = "".join(f"<h4>{name}</h4>{ev._repr_html_()}" for name, ev in self.evaluations.items())
        return (f"<p><b>{self.n} subnetworks: mean Jaccard {self.jaccard:.4f} (chance {self.chance:.4f})</b></p>"
                + self.overlap.to_html(index=False, float_format=lambda x: f"{x:.4f}") + evals)


def headline(ev: Evaluation, criteria: Criteria | None = None) -> dict:
    """The numbers a grid compares: remaining-model metrics relative to the original, and the criteria."""
    values = ev.criterion_values()
    row = {"sparsity": values.pop("sparsity")} | values
    checks = ev.check(criteria)
    return row | {f"holds_{k}": bool(ok) for k, ok in checks.items()} | {"criteria_met": all(checks.values())}


def seed_stability(subnetworks: Sequence[Subnetwork], model=None, target=None, control_kg=None,
                   control_lm=None, *, k: int | None = None, by: str = "module",
                   criteria: Criteria | None = None, names: Sequence | None = None,
                   batch_size: int = 64) -> SeedStability:
    """Jaccard overlap across seeds (vs chance), intersection and k-of-n majority subnetworks.

    With ``model`` and the data (as for ``kcs_tl.evaluate``), the intersection
    and the majority subnetwork are evaluated too. ``k`` defaults to a strict
    majority (``n // 2 + 1``: 2 of 3).
    """
    subnetworks = _subnetworks(subnetworks, least=2)
    n = len(subnetworks)
    k = n // 2 + 1 if k is None else validate.integer("k", k, 1, n)
    criteria = Criteria() if criteria is None else criteria
    if not isinstance(criteria, Criteria):
        raise InputTypeError(f"criteria must be a kcs_tl.Criteria, got {validate.given(criteria)}")
    pairs = pairwise_jaccard(subnetworks, names, by)
    keys = _KEYS[by]
    overlap = pairs.groupby(keys, sort=False)[["total", "size_a", "jaccard", "chance"]].mean().reset_index()
    overlap = overlap.rename(columns={"size_a": "mean_size"})
    overlap["mean_size"] = pairs.groupby(keys, sort=False)[["size_a", "size_b"]].mean().mean(axis=1).values
    overlap["jaccard_over_chance"] = overlap["jaccard"] / overlap["chance"].where(overlap["chance"] > 0)
    common = subnetworks[0]
    for other in subnetworks[1:]:
        common = common & other
    result = SeedStability(overlap, pairs, common, majority(subnetworks, k), k, n, criteria=criteria)
    given = [x is not None for x in (model, target, control_kg, control_lm)]
    if any(given) and not all(given):
        raise InputValueError("seed_stability evaluates only with all of model, target, control_kg and control_lm "
                         "(or none of them, for the overlap alone)")
    if all(given):
        for name, sub in (("intersection", result.intersection), ("majority", result.majority)):
            result.evaluations[name] = evaluate(model, sub, target, control_kg, control_lm, n_random=0,
                                                batch_size=batch_size)
    return result
