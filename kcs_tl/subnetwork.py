"""Subnetwork: the result of a search, usable without the optimiser.

Boolean masks keyed by TransformerLens address (``blocks.3.attn.W_Q``,
``blocks.3.mlp.hook_post``); True marks a unit that belongs to the subnetwork.
Masks keep the model's own layout (or broadcast against it), so per-head and
per-neuron counts are sums over axes. Sparsity is the fraction of masked
weights (units, for hook sites) that are NOT in the subnetwork.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
from jaxtyping import Bool
from safetensors.torch import save_file
from torch import Tensor
from torch.nn.utils import parametrize

from kcs_tl.adapters import (
    Site, check_model, fingerprint, fingerprint_mismatch, hook_broadcast, hook_site, model_device, readout,
    weight_site, weight_view,
)
from kcs_tl.adapters import unit as unit_of
from kcs_tl.files import existing_result, read_json, read_safetensors, result_folder
from kcs_tl.masks.attach import Attachment
from kcs_tl.masks.gates import check_mode, keep_gate
from kcs_tl.validate import InputError, InputValueError

FORMAT = "kcs_tl.subnetwork"
VERSION = 1
_MASKS_FILE, _META_FILE = "masks.safetensors", "subnetwork.json"
_REPLACEMENT = "replacement:"


@dataclass
class Subnetwork:
    """Binary masks per site, the sites' layout, and the model they fit.

    ``replacements`` hold the value an ablated hook unit takes (mean or learned
    ablation); sites without one are zero-ablated.
    """

    masks: dict[str, Bool[Tensor, "..."]]
    sites: dict[str, Site]
    fingerprint: dict
    replacements: dict[str, Tensor] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def __post_init__(self):
        if set(self.masks) != set(self.sites):
            raise InputValueError(f"masks and sites name different addresses: "
                                  f"{sorted(set(self.masks) ^ set(self.sites))}")
        for a, m in self.masks.items():
            if not isinstance(m, Tensor) or m.dtype != torch.bool or tuple(m.shape) != self.sites[a].shape:
                got = f"{m.dtype} {tuple(m.shape)}" if isinstance(m, Tensor) else type(m).__name__
                raise InputValueError(f"mask {a} must be bool of shape {self.sites[a].shape}, got {got}")
        n_layers = self.fingerprint.get("n_layers")
        for a, s in self.sites.items():
            if s.address != a or a != f"blocks.{s.layer}.{s.module}.{s.name}":
                raise InputValueError(f"site {a!r} does not match its own fields "
                                      f"(layer {s.layer}, {s.module}.{s.name})")
            if isinstance(n_layers, int) and not 0 <= s.layer < n_layers:
                raise InputValueError(f"site {a} names layer {s.layer}, but the model it was found on has "
                                      f"layers 0..{n_layers - 1}")

    @classmethod
    def from_masked(cls, masked, settings: dict | None = None) -> "Subnetwork":
        """Binarise a ``MaskedModel``'s current scores (``masked.binary_masks()``)."""
        relax = masked.relaxation
        return cls(
            masks={a: m.cpu() for a, m in masked.binary_masks().items()},
            sites=dict(masked.sites),
            fingerprint=fingerprint(masked.model),
            replacements={a: masked.replacement(a).detach().float().cpu()
                          for a in masked.sites if masked.replacement(a) is not None},
            settings={"relaxation": relax.to_json(), "ablation": masked.ablation, **(settings or {})},
        )

    # -- counts ------------------------------------------------------------

    def expanded(self, address: str) -> Bool[Tensor, "..."]:
        """The mask broadcast to every weight (or unit) it covers."""
        return self.masks[address].expand(self.sites[address].full_shape)

    def sparsity(self) -> float:
        """Fraction of all masked weights (hook units) not in the subnetwork."""
        t = self.site_table()
        return float(1.0 - t["in_subnetwork"].sum() / t["total"].sum())

    def n_in_subnetwork(self) -> int:
        return int(self.site_table()["in_subnetwork"].sum())

    def site_table(self) -> pd.DataFrame:
        """One row per site: totals, members of the subnetwork, sparsity."""
        rows = []
        for a, s in self.sites.items():
            total = math.prod(s.full_shape)
            inside = int(self.expanded(a).sum())
            rows.append({"address": a, "layer": s.layer, "module": s.module, "matrix": s.name,
                         "kind": s.kind, "granularity": s.granularity, "total": total,
                         "in_subnetwork": inside, "sparsity": 1 - inside / total})
        return pd.DataFrame(rows)

    def stats(self, by: str = "layer") -> pd.DataFrame:
        """Sparsity grouped ``by`` one of: overall, layer, module, matrix, site, head, neuron."""
        if by in ("head", "neuron"):
            return self._unit_table(by)
        keys = {"overall": [], "layer": ["layer"], "module": ["layer", "module"],
                "matrix": ["matrix"], "site": None}
        if by not in keys:
            raise InputValueError(f"unknown grouping {by!r}; choose from {sorted(keys) + ['head', 'neuron']}")
        t = self.site_table()
        if keys[by] is None:
            return t
        g = (t.groupby(keys[by])[["total", "in_subnetwork"]].sum().reset_index() if keys[by]
             else t[["total", "in_subnetwork"]].sum().to_frame().T)
        g["sparsity"] = 1 - g["in_subnetwork"] / g["total"]
        return g

    def _unit_table(self, unit: str) -> pd.DataFrame:
        """Per head (attention sites) or per neuron (MLP sites): how much of it is in the subnetwork.

        Under grouped-query attention the stored key/value matrices (``_W_K``, ``_W_V``)
        count per key/value head (column ``unit`` says ``kv_head``); a gated MLP's
        ``W_gate`` counts with its neuron, like ``W_in`` and ``W_out``.
        """
        rows = []
        for a, s in self.sites.items():
            axis = s.head_axis if unit == "head" else s.neuron_axis
            if axis is None:
                continue
            full = self.expanded(a)
            other = [d for d in range(full.dim()) if d != axis]
            inside = full.sum(dim=other) if other else full.long()
            per_unit = math.prod(full.shape) // full.shape[axis]
            for i, n in enumerate(inside.tolist()):
                rows.append({"layer": s.layer, "matrix": s.name, unit: i, "unit": unit_of(s), "total": per_unit,
                             "in_subnetwork": int(n), "sparsity": 1 - n / per_unit})
        if not rows:
            raise InputValueError(f"this subnetwork masks no site with a {unit} axis")
        return pd.DataFrame(rows)

    # -- set operations ----------------------------------------------------

    def _check_same_sites(self, other: "Subnetwork") -> None:
        """Set operations need the same sites of the same model (vocabulary and all)."""
        if self.fingerprint != other.fingerprint:
            diff = [f"{k}: {self.fingerprint.get(k)!r} vs {other.fingerprint.get(k)!r}"
                    for k in sorted(set(self.fingerprint) | set(other.fingerprint))
                    if self.fingerprint.get(k) != other.fingerprint.get(k)]
            raise InputValueError("subnetworks were found on different models: " + "; ".join(diff))
        if self.sites != other.sites:
            raise InputValueError("subnetworks cover different sites: "
                                  f"{sorted(set(self.sites) ^ set(other.sites)) or 'same addresses, other shapes'}")

    def _combine(self, masks: dict[str, Tensor], op: str) -> "Subnetwork":
        return Subnetwork(masks, dict(self.sites), dict(self.fingerprint), dict(self.replacements),
                          {"derived": op})

    def union(self, other: "Subnetwork") -> "Subnetwork":
        self._check_same_sites(other)
        return self._combine({a: self.masks[a] | other.masks[a] for a in self.masks}, "union")

    def intersection(self, other: "Subnetwork") -> "Subnetwork":
        self._check_same_sites(other)
        return self._combine({a: self.masks[a] & other.masks[a] for a in self.masks}, "intersection")

    __or__, __and__ = union, intersection

    def jaccard(self, other: "Subnetwork") -> float:
        """|A & B| / |A | B| over every weight (unit); 1.0 when both are empty."""
        self._check_same_sites(other)
        inter = sum(int((self.expanded(a) & other.expanded(a)).sum()) for a in self.masks)
        union = sum(int((self.expanded(a) | other.expanded(a)).sum()) for a in self.masks)
        return 1.0 if union == 0 else inter / union

    # -- using it on a model -------------------------------------------------

    def check_model(self, model) -> None:
        """Refuse a model whose shape or architecture differs from the one searched."""
        check_model(model)
        diff = fingerprint_mismatch(self.fingerprint, model)
        if diff:
            raise InputValueError("this subnetwork was found on a different model: " + "; ".join(diff))
        for a, s in self.sites.items():
            if not 0 <= s.layer < model.cfg.n_layers:
                raise InputValueError(f"site {a}: the model has no layer {s.layer} "
                                      f"(layers 0..{model.cfg.n_layers - 1})")
            try:
                expected = (weight_site(model, s.layer, s.name, s.granularity) if s.kind == "weight"
                            else hook_site(model, s.layer, f"{s.module}.{s.name}"))
            except InputError as err:
                raise InputValueError(f"site {a} does not exist in this model: {err}") from None
            if expected != s:
                raise InputValueError(f"site {a} is laid out differently in this model: saved {s}, model {expected}")

    def attach(self, model, mode: str = "remove") -> Attachment:
        """Gate ``model`` with this subnetwork until ``.detach()`` is called on the result."""
        self.check_model(model)
        check_mode(mode)
        device = model_device(model)
        gates = {a: keep_gate(m.to(device, torch.float32), mode) for a, m in self.masks.items()}
        repl = {a: r.to(device) for a, r in self.replacements.items()}
        return Attachment(model, list(self.sites.values()), gates.__getitem__, repl.get)

    @contextmanager
    def _attached(self, model, mode: str):
        handle = self.attach(model, mode)
        try:
            yield model
        finally:
            handle.detach()

    def removed(self, model):
        """Context manager: inside the block, ``model`` runs without the subnetwork."""
        return self._attached(model, "remove")

    def kept_only(self, model):
        """Context manager: inside the block, ``model`` runs with only the subnetwork (within the masked sites)."""
        return self._attached(model, "keep")

    @torch.no_grad()
    def apply(self, model, mode: str = "remove"):
        """Permanently edit ``model``'s weights; returns the model.

        Weight sites are zeroed in place. An ablated head or neuron is folded
        into the layer's output: its ``W_O``/``W_out`` slice is zeroed and its
        replacement value's contribution moves into ``b_O``/``b_out``, which is
        exact (the activation itself is not changed, so a cache of
        ``hook_z``/``hook_post`` still shows the unablated values).
        """
        self.check_model(model)
        check_mode(mode)
        if any(parametrize.is_parametrized(m) for m in model.modules()):
            raise RuntimeError("the model carries an attached mask; detach it before a permanent apply")
        for a, s in self.sites.items():
            # Canonical-layout views of the stored weights: in-place edits reach the model.
            w, bias = (weight_view(model, s), None) if s.kind == "weight" else readout(model, s)
            keep = keep_gate(self.masks[a].to(torch.float32), mode).to(w.device, w.dtype)
            if bias is None:
                w.mul_(keep)
            else:
                _fold(w, bias, s, keep, self.replacements.get(a))
        return model

    # -- save / load -------------------------------------------------------

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write ``masks.safetensors`` (bool) and ``subnetwork.json`` into folder ``path``, atomically.

        The folder appears complete or not at all (``kcs_tl.files.result_folder``).
        Refuses a folder that already holds a result unless ``overwrite=True``, and
        never replaces a folder of files that kcs_tl did not write.
        """
        tensors = {a: m.contiguous() for a, m in self.masks.items()}
        tensors |= {_REPLACEMENT + a: r.contiguous() for a, r in self.replacements.items()}
        meta = {"format": FORMAT, "version": VERSION, "fingerprint": self.fingerprint,
                "sites": [s.to_json() for s in self.sites.values()], "settings": self.settings,
                "sparsity": self.sparsity()}
        with result_folder(path, overwrite) as tmp:
            save_file(tensors, tmp / _MASKS_FILE)
            (tmp / _META_FILE).write_text(json.dumps(meta, indent=2, default=str))
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike, model=None) -> "Subnetwork":
        """Read a saved subnetwork; with ``model``, also check that it fits that model."""
        path = existing_result(path)
        if not (path / _META_FILE).is_file() or not (path / _MASKS_FILE).is_file():
            raise FileNotFoundError(f"{path} is not a saved subnetwork (needs {_MASKS_FILE} and {_META_FILE})")
        meta_file = path / _META_FILE
        meta = read_json(meta_file, "a saved subnetwork's metadata (JSON)")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
            found = (meta.get("format"), meta.get("version")) if isinstance(meta, dict) else type(meta).__name__
            raise InputValueError(f"{meta_file} holds {found}, expected format {FORMAT!r} version {VERSION}")
        for key, kind in (("fingerprint", dict), ("sites", list), ("settings", dict)):
            if not isinstance(meta.get(key), kind):
                raise InputValueError(f"{meta_file}: field {key!r} must be a JSON "
                                      f"{'object' if kind is dict else 'list'}, got {meta.get(key)!r:.60}")
        sites = {}
        for i, d in enumerate(meta["sites"]):
            site = _site_from_json(d, f"{meta_file}: sites[{i}]")
            sites[site.address] = site
        tensors = read_safetensors(path / _MASKS_FILE, "a saved subnetwork's masks")
        missing = sorted(set(sites) - set(tensors))
        if missing:
            raise InputValueError(f"{path / _MASKS_FILE} lacks the mask(s) of {missing} listed in {meta_file}")
        try:
            sub = cls(masks={a: tensors[a] for a in sites}, sites=sites, fingerprint=meta["fingerprint"],
                      replacements={k[len(_REPLACEMENT):]: v for k, v in tensors.items()
                                    if k.startswith(_REPLACEMENT)},
                      settings=meta["settings"])
        except InputError as err:
            raise type(err)(f"{path}: {err}") from None
        if model is not None:
            sub.check_model(model)
        return sub

    # -- display -----------------------------------------------------------

    def __repr__(self) -> str:
        inside, total = self.site_table()[["in_subnetwork", "total"]].sum()
        return (f"Subnetwork({inside:,} of {total:,} masked units, sparsity {1 - inside / total:.2%}, "
                f"{len(self.sites)} sites)")

    def _repr_html_(self) -> str:
        table = self.stats("module").to_html(index=False, float_format=lambda x: f"{x:.4f}")
        return f"<p><b>{self!r}</b></p>{table}"


def majority(subnetworks: Sequence[Subnetwork], k: int) -> Subnetwork:
    """Units that belong to at least ``k`` of the given subnetworks (k-of-n vote)."""
    if not subnetworks:
        raise InputValueError("majority needs at least one subnetwork")
    if not 1 <= k <= len(subnetworks):
        raise InputValueError(f"k must lie in 1..{len(subnetworks)}, got {k}")
    first = subnetworks[0]
    for other in subnetworks[1:]:
        first._check_same_sites(other)
    votes = {a: sum(s.masks[a].long() for s in subnetworks) >= k for a in first.masks}
    return first._combine(votes, f"{k}-of-{len(subnetworks)}")


def _fold(w: Tensor, b: Tensor, site: Site, keep: Tensor, replacement: Tensor | None) -> None:
    """Ablate a hook site's units in the weight that reads them; a replacement value moves into the bias."""
    if replacement is not None:
        r = replacement.to(w.device, w.dtype) * hook_broadcast(site, 1 - keep)
        b.add_(r.reshape(-1) @ w.reshape(r.numel(), -1))
    w.mul_(keep.reshape((-1,) + (1,) * (w.dim() - 1)))


def _site_from_json(d, where: str) -> Site:
    """A saved site, its fields checked against ``Site``'s annotations (errors say which field)."""
    if not isinstance(d, dict):
        raise InputValueError(f"{where} must be a JSON object, got {d!r:.60}")
    names = [f.name for f in dataclasses.fields(Site)]
    missing, unknown = [n for n in names if n not in d], sorted(set(d) - set(names))
    if missing or unknown:
        raise InputValueError(f"{where}: missing field(s) {missing}, unknown field(s) {unknown}; a site has {names}")
    for f in dataclasses.fields(Site):
        v = d[f.name]
        ok = {"str": isinstance(v, str),
              "int": isinstance(v, int) and not isinstance(v, bool),
              "int | None": v is None or (isinstance(v, int) and not isinstance(v, bool)),
              "tuple[int, ...]": isinstance(v, list) and all(isinstance(x, int) and x > 0 for x in v)}
        if not ok.get(str(f.type), True):
            raise InputValueError(f"{where}: field {f.name!r} must be {f.type}, got {v!r:.60}")
    return Site.from_json(d)
