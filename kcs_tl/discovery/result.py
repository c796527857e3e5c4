"""``Discovery``: what a search returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from kcs_tl.discovery.config import DiscoveryConfig
from kcs_tl.subnetwork import Subnetwork


@dataclass
class Discovery:
    """A search's result: the subnetwork, the history (one row per step) and why it stopped.

    ``setup`` records what the search chose for itself: ``prepend_bos`` (whether
    text and facts were encoded with a BOS), ``teacher`` (how the original
    model's outputs were kept, ``kcs_tl.discovery.teacher``) and ``target_known``
    (TargetKG facts whose gold tail the original model ranks in its top 10).
    """

    subnetwork: Subnetwork
    history: pd.DataFrame
    config: DiscoveryConfig
    best_step: int
    criteria_met: bool
    stopped: str
    setup: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        setup = "".join(f", {k}: {v}" for k, v in self.setup.items())
        return (f"Discovery({self.subnetwork!r}, best step {self.best_step}, criteria "
                f"{'met' if self.criteria_met else 'not met'}, stopped: {self.stopped}{setup})")

    def _repr_html_(self) -> str:
        evals = self.history.dropna(subset=["val_target_top1"]) if "val_target_top1" in self.history else self.history
        return (f"<p><b>{self!r}</b></p>" + self.subnetwork._repr_html_()
                + evals.tail(10).to_html(index=False, float_format=lambda x: f"{x:.4f}"))
