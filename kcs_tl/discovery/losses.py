"""One step's losses, under one draw of the masks.

TargetKG and ControlKG sentences run in one forward and LM blocks in another,
both on the model with the subnetwork removed and from the cached residual
stream, so only the masked layers run. The terms are those of ``terms``; the
control terms are KLs to the original model's outputs (``teacher``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from kcs_tl.adapters import run_from, to_logits
from kcs_tl.discovery.config import DiscoveryConfig
from kcs_tl.discovery.prepare import SearchData
from kcs_tl.discovery.teacher import TeacherOutputs
from kcs_tl.discovery.terms import Lagrangian, sparsity_weight, suppression
from kcs_tl.masks.masked_model import MaskedModel
from kcs_tl.precision import at_least_fp32


def _rows(n: int, size: int, gen: torch.Generator) -> Tensor:
    """A sorted random minibatch of row indices (sorted, so the cached teacher outputs line up)."""
    return torch.arange(n) if size >= n else torch.randperm(n, generator=gen)[:size].sort().values


def _stack(a: Float[Tensor, "n pos d"], b: Float[Tensor, "m pos2 d"]) -> Tensor:
    """Two batches of residuals, right-padded with zeros to one width (causal: padding is never attended)."""
    width = max(a.shape[1], b.shape[1])
    return torch.cat([F.pad(a, (0, 0, 0, width - a.shape[1])), F.pad(b, (0, 0, 0, width - b.shape[1]))])


def step_losses(masked: MaskedModel, data: SearchData, cfg: DiscoveryConfig, step: int, gen: torch.Generator,
                lagrangian: Lagrangian | None) -> dict[str, Tensor]:
    """All loss terms of one step, under one draw of the masks."""
    model = masked.model
    t_rows = _rows(len(data.target), cfg.kg_batch_size, gen)
    t = data.target[t_rows]
    c_rows = _rows(len(data.control), cfg.kg_batch_size, gen)
    c = data.control[c_rows]
    lm_rows = _rows(len(data.lm), cfg.lm_batch_size, gen).to(data.lm.device)
    t_width, c_width = t.tokens.shape[1], c.tokens.shape[1]
    out = {}
    t_resid = data.target_resid[t_rows.to(data.target_resid.device), :t_width]
    c_resid = data.control_resid[c_rows.to(data.control_resid.device), :c_width]
    with masked.step():
        # Only the masked layers run; the KG sentences are unembedded at tail-predicting positions only.
        final = run_from(model, _stack(t_resid, c_resid), data.start)
        t_logits = at_least_fp32(to_logits(model, final[: len(t), :t_width][t.label_mask]))
        c_logits = at_least_fp32(to_logits(model, final[len(t):, :c_width][c.label_mask]))
        out["target"] = suppression(t_logits, t.labels[t.label_mask], cfg.suppression, cfg.suppression_log_margin)
        if data.control_teacher is None:
            ref = _on_the_fly_teacher(masked, c_resid, data.start, c.label_mask)
        else:
            ref_rows = torch.isin(data.control_teacher_rows, c_rows.to(data.control_teacher_rows.device))
            ref = data.control_teacher[torch.nonzero(ref_rows)[:, 0]]
        out["control_kg"] = ref.kl(c_logits).mean()
        chunks = lm_rows.split(data.lm_chunk)
        if len(chunks) == 1:
            out["control_lm"] = _lm_kl(masked, data, lm_rows) / lm_rows.numel() / data.lm.shape[1]
        else:  # each chunk's backward now, so only one chunk's activations are alive at a time
            n = lm_rows.numel() * data.lm.shape[1]
            out["control_lm"] = sum(_lm_kl(masked, data, rows, cfg.control_lm_weight / n) for rows in chunks) / n
        if cfg.expression_weight:
            with masked.as_mode("keep"):
                kept = at_least_fp32(model(t.tokens)[t.label_mask])
            out["expression"] = F.cross_entropy(kept, t.labels[t.label_mask])
    density = masked.expected_density()
    out["density"] = density
    if lagrangian is not None:  # the penalty term, not the sparsity
        out["sparsity_penalty"] = lagrangian(density)
    else:
        out["sparsity_penalty"] = sparsity_weight(step, cfg.steps, cfg.sparsity_start, cfg.sparsity_end) * density
    out["loss"] = (cfg.target_weight * out["target"] + cfg.control_kg_weight * out["control_kg"]
                   + cfg.control_lm_weight * out["control_lm"] + out["sparsity_penalty"]
                   + cfg.expression_weight * out.get("expression", 0.0))
    return out


def _lm_kl(masked: MaskedModel, data: SearchData, lm_rows: Int[Tensor, "rows"],
           backward_weight: float | None = None) -> Float[Tensor, ""]:
    """Summed KL(original || masked) over the positions of LM blocks ``lm_rows``.

    With ``backward_weight`` the weighted sum is backpropagated at once (keeping the
    masks' graph for the other terms) and the sum comes back detached.
    """
    model = masked.model
    resid = data.lm_resid[lm_rows]
    logits = at_least_fp32(to_logits(model, run_from(model, resid, data.start))).flatten(0, 1)
    if data.lm_teacher is None:
        ref = _on_the_fly_teacher(masked, resid, data.start)
    else:
        positions = (lm_rows[:, None] * data.lm.shape[1]
                     + torch.arange(data.lm.shape[1], device=lm_rows.device)).flatten()
        ref = data.lm_teacher[positions]
    total = ref.kl(logits).sum()
    if backward_weight is None:
        return total
    (backward_weight * total).backward(retain_graph=True)
    return total.detach()


@torch.no_grad()
def _on_the_fly_teacher(masked: MaskedModel, resid: Float[Tensor, "batch pos d_model"], start: int,
                        positions: Bool[Tensor, "batch pos"] | None = None) -> TeacherOutputs:
    """The original model's distributions, computed now (masks off) from cached residuals: ``on_the_fly``."""
    model = masked.model
    with masked.disabled():
        final = run_from(model, resid, start)
    final = final[positions] if positions is not None else final.flatten(0, 1)
    return TeacherOutputs.from_logits(to_logits(model, final), None)
