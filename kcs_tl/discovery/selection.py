"""Which checkpoint is the result.

Every ``eval_every`` steps the binary mask that would be returned
(``MaskedModel.binary()``, whatever the relaxation) is scored on validation
data (TargetKG on training templates, held-out ControlKG triplets, held-out LM
blocks). The result is the evaluated checkpoint that meets the criteria with
the highest sparsity; if none does, the one with the smallest sum of the
criteria's shortfalls, each normalised to [0, 1] (``Criteria.shortfalls``), so
that no criterion's unit outweighs the others: a checkpoint that forgot nothing
scores 1 on the target alone and never beats one that forgot and kept the
control facts and the text. Not simply the last.
"""

from __future__ import annotations

import torch

from kcs_tl.discovery.config import DiscoveryConfig
from kcs_tl.discovery.prepare import SearchData
from kcs_tl.masks.masked_model import MaskedModel
from kcs_tl.evaluation import Criteria, control_ratio, kg_metrics, lm_metrics, score_kg, score_lm


@torch.no_grad()
def validation_scores(masked: MaskedModel, data: SearchData, cfg: DiscoveryConfig) -> dict[str, float]:
    """Score the binary mask ``to_subnetwork()`` would return on validation data, and judge it (``judged``)."""
    with masked.binary():
        model = masked.model
        sparsity = masked.to_subnetwork().sparsity()
        target_top1 = kg_metrics(score_kg(model, data.target))["top1"]
        control_top1 = kg_metrics(score_kg(model, data.control_val))["top1"]
        lm_ppl = lm_metrics(score_lm(model, data.lm_val))["ppl"]
    return judged(cfg.criteria, data.base_target_top1, target_top1, control_ratio(control_top1, data.base_control_top1),
                  lm_ppl / data.base_lm_ppl - 1, sparsity)


def judged(criteria: Criteria, original_target_top1: float, target_top1: float, control_top1_ratio: float,
           lm_ppl_rise: float, sparsity: float) -> dict:
    """A checkpoint's numbers with what the rule compares: ``shortfall``, the sum of the
    normalised shortfalls (``Criteria.shortfalls``, each in [0, 1]), and ``criteria_met``."""
    gaps = criteria.shortfalls(target_top1, control_top1_ratio, lm_ppl_rise, sparsity,
                               original_target_top1=original_target_top1)
    return {"val_target_top1": target_top1, "val_control_top1_ratio": control_top1_ratio,
            "val_lm_ppl_rise": lm_ppl_rise, "val_sparsity": sparsity,
            "shortfall": sum(gaps.values()), "criteria_met": not any(gaps.values())}


def is_better(val: dict, best: dict | None) -> bool:
    """The checkpoint rule: meeting the criteria beats not; then higher sparsity, else a lower summed shortfall."""
    if best is None:
        return True
    if val["criteria_met"] != best["criteria_met"]:
        return val["criteria_met"]
    if val["criteria_met"]:
        return val["val_sparsity"] > best["val_sparsity"]
    return val["shortfall"] < best["shortfall"]
