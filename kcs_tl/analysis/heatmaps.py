"""Layer x head and layer x neuron-bucket heat maps: subnetwork density beside patching effect.

circuitsvis has no such view, so these are matplotlib figures. Neurons are
grouped into ``n_buckets`` runs of consecutive indices per layer (a layer of
3072 neurons does not fit a page); a bucket shows the mean density and the mean
absolute patching effect of its neurons.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kcs_tl import validate
from kcs_tl.analysis.components import KINDS
from kcs_tl.analysis.patching import PatchingResult
from kcs_tl.validate import InputValueError


def _bucketed(frame: pd.DataFrame, n_buckets: int) -> pd.DataFrame:
    """``layer x index`` -> ``layer x bucket`` by the mean over consecutive columns."""
    groups = np.arange(frame.shape[1]) * min(n_buckets, frame.shape[1]) // frame.shape[1]
    return frame.T.groupby(groups).mean().T


def heatmaps(components: pd.DataFrame, patching: dict[str, PatchingResult] | None = None, n_buckets: int = 32):
    """A figure with, per kind of component (head, neuron), the subnetwork's density and,
    when ``patching[kind]`` is given, its absolute patching effect, as layer x unit maps."""
    import matplotlib.pyplot as plt

    n_buckets = validate.integer("n_buckets", n_buckets, 1)
    patching = patching or {}
    for kind in patching:
        validate.choice("patching key", kind, KINDS)
    panels = []
    for kind in KINDS:
        rows = components[components.kind == kind]
        if rows.empty:
            continue
        density = rows.pivot(index="layer", columns="index", values="fraction")
        panels.append((kind, "fraction of the component in the subnetwork", density, "Greens"))
        if kind in patching:
            effect = patching[kind].matrix().abs()
            panels.append((kind, f"|{patching[kind].method} patching effect| ({patching[kind].metric})",
                           effect, "Purples"))
    if not panels:
        raise InputValueError("nothing to draw: the components table holds no heads or neurons")
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 2.8), squeeze=False)
    for ax, (kind, title, frame, cmap) in zip(axes[0], panels):
        if kind == "neuron":
            frame = _bucketed(frame, n_buckets)
        image = ax.imshow(frame.to_numpy(float), aspect="auto", cmap=cmap, interpolation="nearest")
        ax.set_yticks(range(len(frame.index)), [f"L{layer}" for layer in frame.index])
        ax.set_xlabel("head" if kind == "head" else f"neuron bucket ({n_buckets} per layer)")
        ax.set_title(title, fontsize=8)
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig
