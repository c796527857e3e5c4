"""Validation scores the binary mask that discover returns, for every relaxation.

A continuous eval-time gate (Hard Concrete, plain sigmoid) once made the checkpoint
rule judge a different model from the result: "criteria met" with an empty subnetwork.
"""

import pytest
import torch

from kcs_tl import attach_masks, evaluate
from kcs_tl.evaluation import control_ratio
from kcs_tl.discovery import DiscoveryConfig, discover
from kcs_tl.discovery.prepare import prepare
from kcs_tl.masks.relaxations import RELAXATIONS

# The search scores cached residuals run from the first masked layer in its own batches; evaluate runs
# whole forwards: float32 log-probabilities ~1e-6 apart (logits below 20 times 6e-8), so perplexities
# agree to ~1e-6 relative (10x margin); a top-k fraction moves only if two logits tie within 1e-6.
SAME_METRICS = dict(rel=1e-5, abs=1e-6)


def recorded_and_evaluated(model, target, control, lm, cfg):
    """The val_* numbers recorded for the chosen checkpoint, and evaluate() of the returned subnetwork."""
    found = discover(model, target, control, lm, cfg)
    row = found.history.set_index("step").loc[found.best_step]
    data = prepare(model, target, control, lm, cfg, torch.device("cpu"))  # the same split (seeded)
    ev = evaluate(model, found.subnetwork, data.target, data.control_val, data.lm_val, n_random=0)
    control, base_control = (ev.value("control_kg", m, "top1") for m in ("remaining", "original"))
    evaluated = {
        "val_target_top1": ev.value("target", "remaining", "top1"),
        "val_control_top1_ratio": control_ratio(control, base_control),
        "val_lm_ppl_rise": ev.value("control_lm", "remaining", "ppl") / ev.value("control_lm", "original", "ppl") - 1,
        "val_sparsity": found.subnetwork.sparsity(),
    }
    return found, {k: float(row[k]) for k in evaluated}, evaluated


@pytest.mark.parametrize("relaxation", sorted(RELAXATIONS))
def test_recorded_validation_equals_evaluating_the_returned_subnetwork(toy, relaxation):
    model, target, control, blocks = toy
    cfg = DiscoveryConfig(steps=20, eval_every=10, kg_batch_size=16, lm_batch_size=4, progress=False,
                          early_stop=False, layers=(1,), relaxation=relaxation)
    found, recorded, evaluated = recorded_and_evaluated(model, target, control, blocks, cfg)
    assert recorded == pytest.approx(evaluated, **SAME_METRICS)
    assert found.criteria_met == bool(found.history.set_index("step").loc[found.best_step, "criteria_met"])


def test_hard_concrete_never_reports_criteria_met_with_an_empty_subnetwork(builtin):
    # On the built-in model this run once stopped with "criteria met at step 5" and 0 units removed.
    z, task = builtin
    cfg = DiscoveryConfig(steps=5, eval_every=5, progress=False, relaxation="hard_concrete")
    found, recorded, evaluated = recorded_and_evaluated(z.model, task.target, task.control, task.lm, cfg)
    assert recorded == pytest.approx(evaluated, **SAME_METRICS)
    assert not (found.criteria_met and found.subnetwork.n_in_subnetwork() == 0)
    assert not found.stopped.startswith("criteria met") or found.subnetwork.n_in_subnetwork() > 0


@pytest.mark.parametrize("relaxation", sorted(RELAXATIONS))
def test_eval_mode_computes_with_the_mask_to_subnetwork_returns(model, tokens, relaxation):
    masked = attach_masks(model, hooks=("mlp.hook_post",), relaxation=relaxation, init_prob=0.5)
    with torch.no_grad():
        for p in masked.scores.values():
            p.normal_(0, 0.3)  # near the threshold, where a continuous gate is far from 0 or 1
    sub = masked.to_subnetwork()
    with masked.binary():
        assert not masked.training
        scored = masked(tokens)
        assert all(torch.equal(m.bool(), sub.masks[a]) and set(m.unique().tolist()) <= {0.0, 1.0}
                   for a, m in masked.masks().items())
    assert masked.training
    masked.detach()
    with sub.removed(model):
        torch.testing.assert_close(scored, model(tokens), rtol=0, atol=0)
