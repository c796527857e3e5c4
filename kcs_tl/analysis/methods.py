"""compare_methods(): learned subnetworks and attribution baselines at matched sizes, in one table.

Every method is scored by the same evaluation (``evaluate_intervention`` for an
``InterventionTask``, ``metrics.evaluate`` for a knowledge-forgetting task), and
every row says what the method cost: wall-clock seconds and model forward
passes (calls; each search step makes two, one integrated-gradients point one).

Columns: method, size (requested), n_units (actual), target_effect (the
task's effect after intervening; knowledge: TargetKG top-1 of the remaining
model), target_original, control_damage (intervention: KL(p_original || p)
on held-out LM blocks; knowledge: drop of ControlKG top-1, in points),
lm_damage (relative rise of LM perplexity), wall_s, forward_passes.
"""

from __future__ import annotations

import dataclasses
import time

import pandas as pd
import torch

from kcs_tl import validate
from kcs_tl.baselines.attribution import UNIT_METHODS, WEIGHT_METHODS, unit_baseline, weight_baseline
from kcs_tl.data.verbalise import encode
from kcs_tl.interventions.counting import count_forwards
from kcs_tl.interventions.effect import evaluate_intervention
from kcs_tl.interventions.find import METHODS, InterventionConfig, find_interventions
from kcs_tl.interventions.task import InterventionTask
from kcs_tl.validate import InputTypeError, InputValueError

INTERVENTION_METHODS = METHODS + UNIT_METHODS
KNOWLEDGE_METHODS = ("discover",) + WEIGHT_METHODS


def _timed(model, fn):
    start = time.perf_counter()
    with count_forwards(model) as count:
        out = fn()
    return out, time.perf_counter() - start, count.calls


def _intervention_rows(model, task, methods, sizes, config, steps) -> list[dict]:
    config = config or InterventionConfig()
    if not isinstance(config, InterventionConfig):
        raise InputTypeError("config must be an InterventionConfig for an InterventionTask, "
                             f"got {validate.given(config)}")
    rows = []
    for size in sizes:
        like, found = None, {}
        for m in [m for m in methods if m in METHODS]:
            r = find_interventions(model, task, dataclasses.replace(config, method=m, target_units=size), n_random=0)
            found[m] = (r.subnetwork, r.wall_s, r.forward_passes, r.effect)
            like = like or r.subnetwork
        for m in methods:
            if m in METHODS:
                sub, wall, passes, ev = found[m]
            else:
                sub, wall, passes = _timed(model, lambda m=m: unit_baseline(
                    model, task, m, like=like, size=None if like else size, hooks=config.hooks,
                    layers=config.layers, ablation="zero" if config.ablation == "zero" else "mean",
                    steps=steps, seed=config.seed))
                ev = evaluate_intervention(model, task, sub, n_random=0)
            name = "test_" + task.effect_name
            rows.append({"method": m, "size": size, "n_units": sub.n_in_subnetwork(),
                         "target_effect": ev.value("intervened", name), "target_original": ev.value("original", name),
                         "control_damage": ev.value("intervened", "lm_kl"), "lm_damage": ev.ppl_change,
                         "wall_s": wall, "forward_passes": passes})
    return rows


def _knowledge_rows(model, task, methods, sizes, config) -> list[dict]:
    from kcs_tl.evaluation import evaluate
    from kcs_tl.discovery import DiscoveryConfig, discover

    config = config or DiscoveryConfig(progress=False)
    if not isinstance(config, DiscoveryConfig):
        raise InputTypeError(f"config must be a DiscoveryConfig for a knowledge task, got {validate.given(config)}")
    batch = encode(task.target, model.tokenizer, prepend_bos=config.bos(model))

    def gold_logprob(m):  # what removing the subnetwork should lower
        lp = m(batch.tokens.to(next(m.parameters()).device)).float().log_softmax(-1)
        mask = batch.label_mask.to(lp.device)
        return lp[mask].gather(-1, batch.labels.to(lp.device)[mask][:, None]).sum()

    rows = []
    for sparsity in sizes or [config.target_sparsity]:
        cfg = dataclasses.replace(config, target_sparsity=sparsity)
        found, found_wall, found_passes = _timed(model, lambda: discover(model, task.target, task.control, task.lm,
                                                                         cfg))
        for m in methods:
            if m == "discover":
                sub, wall, passes = found.subnetwork, found_wall, found_passes
            else:
                sub, wall, passes = _timed(model, lambda m=m: weight_baseline(
                    model, found.subnetwork, m, gold_logprob, seed=config.seed))
            ev = evaluate(model, sub, task.target, task.control, task.lm, n_random=0)
            v = ev.value
            rows.append({"method": m, "size": sparsity, "n_units": sub.n_in_subnetwork(),
                         "target_effect": v("target", "remaining", "top1"),
                         "target_original": v("target", "original", "top1"),
                         "control_damage": v("control_kg", "original", "top1") - v("control_kg", "remaining", "top1"),
                         "lm_damage": v("control_lm", "remaining", "ppl") / v("control_lm", "original", "ppl") - 1,
                         "wall_s": wall, "forward_passes": passes})
    return rows


def compare_methods(model, task, methods=None, sizes=None, config=None, *, ig_steps: int = 20) -> pd.DataFrame:
    """Run ``methods`` at matched sizes on ``task``; one row per (method, size).

    ``task`` is an ``InterventionTask`` (methods from ``INTERVENTION_METHODS``;
    ``sizes`` are numbers of units, held by the searches' Lagrangian; the
    attribution baselines copy the first search's per-site counts) or a
    knowledge-forgetting task with ``target``, ``control`` and ``lm``
    (``kcs_tl.zoo.task.forgetting_task``; methods from ``KNOWLEDGE_METHODS``;
    ``sizes`` are target sparsities for ``discover``, baselines match its
    per-site counts). ``config`` is an ``InterventionConfig`` or a ``DiscoveryConfig``.
    """
    knowledge = all(hasattr(task, f) for f in ("target", "control", "lm"))
    if not knowledge and not isinstance(task, InterventionTask):
        raise InputTypeError("task must be an InterventionTask or a forgetting task (target, control, lm), "
                             f"got {validate.given(task)}")
    options = KNOWLEDGE_METHODS if knowledge else INTERVENTION_METHODS
    methods = validate.names("methods", methods if methods is not None else options, options)
    if not methods:
        raise InputValueError(f"methods is empty; choose from {options}")
    ig_steps = validate.integer("ig_steps", ig_steps, 1)
    if knowledge:
        sizes = None if sizes is None else [validate.fraction(f"sizes[{i}]", s) for i, s in enumerate(sizes)]
        rows = _knowledge_rows(model, task, methods, sizes, config)
    else:
        if sizes is None or isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__") or not list(sizes):
            raise InputValueError(f"sizes must be a non-empty list of unit counts, got {validate.given(sizes)}")
        sizes = [validate.integer(f"sizes[{i}]", s, 1) for i, s in enumerate(sizes)]
        rows = _intervention_rows(model, task, methods, sizes, config, ig_steps)
    return pd.DataFrame(rows)
