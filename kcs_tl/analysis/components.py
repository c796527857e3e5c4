"""A subnetwork seen as components: how much of each attention head and MLP neuron it holds.

Everything in ``kcs_tl.analysis`` speaks of the same components, named by one key:
``L{layer}H{head}`` for an attention head, ``L{layer}N{neuron}`` for an MLP neuron.
A weight-level subnetwork is aggregated (a head owns its slices of ``W_Q``, ``W_K``,
``W_V`` and ``W_O``; a neuron its ``W_in`` column and ``W_out`` row); a head- or
neuron-level one (hook sites) maps directly, its fraction being 0 or 1.
"""

from __future__ import annotations

import math

import pandas as pd
import torch

from kcs_tl import validate
from kcs_tl.subnetwork import Subnetwork
from kcs_tl.validate import InputTypeError, InputValueError

KINDS = ("head", "neuron")
_PARTS = {"head": ("W_Q", "W_K", "W_V", "W_O", "hook_z"), "neuron": ("W_in", "W_out", "hook_post")}


def component_key(kind: str, layer: int, index: int) -> str:
    """``L3H1`` (head 1 of layer 3) or ``L3N37`` (neuron 37 of layer 3)."""
    return f"L{layer}{'H' if kind == 'head' else 'N'}{index}"


def components(subnetwork: Subnetwork) -> pd.DataFrame:
    """One row per head and neuron of the masked layers: the fraction of it in the subnetwork.

    Columns: ``component`` (the key), ``kind`` (head | neuron), ``layer``, ``index``,
    one ``frac_<matrix>`` column per masked matrix (``frac_W_Q`` ... ``frac_W_out``, or
    ``frac_hook_z`` / ``frac_hook_post`` for head / neuron masks; NaN where a component
    has no such matrix), ``in_subnetwork`` and ``total`` (weights or units, summed over
    its matrices) and ``fraction`` (= in_subnetwork / total, the matrices together).
    """
    if not isinstance(subnetwork, Subnetwork):
        raise InputTypeError(f"subnetwork must be a Subnetwork, got {validate.given(subnetwork)}")
    counts: dict[tuple[str, int], dict[str, tuple[torch.Tensor, int]]] = {}
    for address, site in subnetwork.sites.items():
        kind = "head" if site.head_axis is not None else "neuron" if site.neuron_axis is not None else None
        if kind is None:
            continue
        axis = site.head_axis if kind == "head" else site.neuron_axis
        full = subnetwork.expanded(address)
        other = [d for d in range(full.dim()) if d != axis]
        inside = full.sum(dim=other) if other else full.long()
        counts.setdefault((kind, site.layer), {})[site.name] = (inside, math.prod(full.shape) // full.shape[axis])
    frames = []
    for (kind, layer), parts in sorted(counts.items()):
        n = next(iter(parts.values()))[0].numel()
        frame = pd.DataFrame({"component": [component_key(kind, layer, i) for i in range(n)], "kind": kind,
                              "layer": layer, "index": range(n)})
        inside_all, total_all = torch.zeros(n), 0
        for name in _PARTS[kind]:
            if name in parts:
                inside, total = parts[name]
                frame[f"frac_{name}"] = (inside.double() / total).numpy()
                inside_all, total_all = inside_all + inside, total_all + total
        frame["in_subnetwork"] = inside_all.long().numpy()
        frame["total"] = total_all
        frame["fraction"] = frame["in_subnetwork"] / total_all
        frames.append(frame)
    if not frames:
        raise InputValueError("this subnetwork masks no attention head or MLP neuron")
    table = pd.concat(frames, ignore_index=True)
    fracs = [c for c in table.columns if c.startswith("frac_")]
    return table[["component", "kind", "layer", "index", *fracs, "in_subnetwork", "total", "fraction"]]


def density(table: pd.DataFrame, kind: str) -> pd.DataFrame:
    """``layer x index`` matrix of ``fraction`` for one ``kind`` of component (for heat maps)."""
    validate.choice("kind", kind, KINDS)
    rows = table[table.kind == kind]
    if rows.empty:
        raise InputValueError(f"the components table holds no {kind}s")
    return rows.pivot(index="layer", columns="index", values="fraction")
