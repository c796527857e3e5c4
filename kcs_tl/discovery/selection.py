"""Which checkpoint is the result.

Every ``eval_every`` steps the binary mask that would be returned
(``MaskedModel.binary()``, whatever the relaxation) is scored on validation
data (TargetKG on training templates, held-out ControlKG triplets, held-out LM
blocks). The result is the evaluated checkpoint that meets the criteria with
the highest sparsity; if none does, the one with the smallest summed
shortfall from the criteria (the best trade-off). Not simply the last.
"""

from __future__ import annotations

import torch

from kcs_tl.discovery.config import DiscoveryConfig
from kcs_tl.discovery.prepare import SearchData
from kcs_tl.masks.masked_model import MaskedModel
from kcs_tl.evaluation import control_ratio, kg_metrics, lm_metrics, score_kg, score_lm


@torch.no_grad()
def validation_scores(masked: MaskedModel, data: SearchData, cfg: DiscoveryConfig) -> dict[str, float]:
    """Score the binary mask ``to_subnetwork()`` would return on validation data; lower ``shortfall`` is better."""
    with masked.binary():
        model = masked.model
        sparsity = masked.to_subnetwork().sparsity()
        target_top1 = kg_metrics(score_kg(model, data.target))["top1"]
        control_top1 = kg_metrics(score_kg(model, data.control_val))["top1"]
        lm_ppl = lm_metrics(score_lm(model, data.lm_val))["ppl"]
    ratio = control_ratio(control_top1, data.base_control_top1)
    rise = lm_ppl / data.base_lm_ppl - 1
    gaps = cfg.criteria.shortfalls(target_top1, ratio, rise, sparsity)
    return {"val_target_top1": target_top1, "val_control_top1_ratio": ratio,
            "val_lm_ppl_rise": rise, "val_sparsity": sparsity,
            "shortfall": sum(gaps.values()), "criteria_met": all(v == 0 for v in gaps.values())}


def is_better(val: dict, best: dict | None) -> bool:
    """The checkpoint rule: meeting the criteria beats not; then higher sparsity, else lower shortfall."""
    if best is None:
        return True
    if val["criteria_met"] != best["criteria_met"]:
        return val["criteria_met"]
    if val["criteria_met"]:
        return val["val_sparsity"] > best["val_sparsity"]
    return val["shortfall"] < best["shortfall"]
