"""discover(): objective pieces, caching, checkpoint rule, resume, faults."""

import json
import math
import shutil

import pytest
import torch

import kcs_tl.discovery.search as search
from kcs_tl.baselines import random_like
from kcs_tl.data import encode
from kcs_tl.discovery import DiscoveryConfig, Search, discover
from kcs_tl.discovery.prepare import prepare
from kcs_tl.discovery.teacher import TeacherOutputs
from kcs_tl.discovery.terms import kl_uniform, sparsity_weight
from kcs_tl.evaluation import score_kg

QUICK = dict(steps=30, eval_every=10, kg_batch_size=16, lm_batch_size=4, progress=False,
             early_stop=False, layers=(1,))


def test_closed_form_kl_uniform_equals_the_explicit_one():
    logits = torch.randn(5, 37) * 3
    uniform = torch.full_like(logits, 1 / 37)
    explicit = torch.nn.functional.kl_div(logits.log_softmax(-1), uniform, reduction="none").sum(-1)
    torch.testing.assert_close(kl_uniform(logits), explicit)


def test_teacher_kl_full_and_top_k():
    p_logits, q_logits = torch.randn(4, 50) * 2, torch.randn(4, 50) * 2
    p, q = p_logits.log_softmax(-1), q_logits.log_softmax(-1)
    full = (p.exp() * (p - q)).sum(-1)
    torch.testing.assert_close(TeacherOutputs.from_logits(p_logits, None).kl(q_logits), full)
    torch.testing.assert_close(TeacherOutputs.from_logits(p_logits, 50).kl(q_logits), full)
    top = TeacherOutputs.from_logits(p_logits, 5).kl(q_logits)
    assert torch.all(top <= full + 1e-6) and torch.all(top >= 0)


def test_sparsity_schedule_is_flat_then_linear():
    assert sparsity_weight(0, 100) == 2 and sparsity_weight(50, 100) == 2
    assert sparsity_weight(75, 100) == pytest.approx(2.5) and sparsity_weight(100, 100) == 3


def test_cached_original_outputs_equal_a_fresh_forward(toy):
    model, target, control, blocks = toy
    data = prepare(model, target, control, blocks, DiscoveryConfig(), torch.device("cpu"))
    fresh = model(data.control.tokens)[data.control.label_mask].softmax(-1)
    torch.testing.assert_close(data.control_teacher.probs, fresh)
    fresh_lm = model(data.lm).softmax(-1).flatten(0, 1)
    torch.testing.assert_close(data.lm_teacher.probs, fresh_lm)
    # the cached residual at the first masked layer, run through the rest, gives the same logits
    from kcs_tl.adapters import run_from, to_logits
    resumed = to_logits(model, run_from(model, data.control_resid, data.start)[data.control.label_mask])
    torch.testing.assert_close(resumed, model(data.control.tokens)[data.control.label_mask])
    # and the KL against the cache is zero for the unmasked model
    # the cache holds float32 probabilities computed in other batches: each within ~1e-7 of the fresh
    # ones, so KL(cache || fresh) = sum_v (p_v - p'_v) z_v is 0 within ~1e-7 * |logits| (below 20 here)
    torch.testing.assert_close(data.lm_teacher.kl(model(data.lm).flatten(0, 1)), torch.zeros(len(fresh_lm)),
                               atol=1e-5, rtol=0)


def test_a_short_search_hurts_the_target_more_than_the_control(builtin):
    z, task = builtin
    found = discover(z.model, task.target, task.control, task.lm, DiscoveryConfig(**QUICK | {"layers": None}))
    t, c = encode(task.target, z.tokenizer), encode(task.control, z.tokenizer)
    before_t, before_c = score_kg(z.model, t).logp.mean(), score_kg(z.model, c).logp.mean()
    with found.subnetwork.removed(z.model):
        after_t, after_c = score_kg(z.model, t).logp.mean(), score_kg(z.model, c).logp.mean()
    assert before_t - after_t > 1.0 > before_c - after_c
    assert 0 < found.best_step <= 30 and found.stopped == "completed all steps"
    assert {"target", "control_kg", "control_lm", "sparsity_penalty", "density", "val_sparsity",
            "shortfall"} <= set(found.history.columns)
    assert found.subnetwork.settings["config"]["steps"] == 30
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in z.model.modules())


def test_the_random_baseline_removes_exactly_the_same_counts_per_site(toy):
    model, target, control, blocks = toy
    sub = discover(model, target, control, blocks, DiscoveryConfig(**QUICK)).subnetwork
    # neither empty nor whole (285 of 8,192 weights), so a draw of the same counts can differ from it
    assert 0 < sub.n_in_subnetwork() < sum(m.numel() for m in sub.masks.values())
    for seed in range(3):
        other = random_like(sub, seed)
        assert {a: int(m.sum()) for a, m in other.masks.items()} == {a: int(m.sum()) for a, m in sub.masks.items()}
        assert not all(torch.equal(other.masks[a], sub.masks[a]) for a in sub.masks)


def test_config_round_trips_through_json_and_refuses_unknown_fields():
    cfg = DiscoveryConfig(layers=(2, 3), hooks=("mlp.hook_post",), target_sparsity=0.99)
    assert DiscoveryConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    with pytest.raises(ValueError, match="unknown config fields \\['stepz'\\]"):
        DiscoveryConfig.from_json({"stepz": 3})
    assert DiscoveryConfig.preset("published").steps == 40_000
    with pytest.raises(ValueError, match="published"):
        DiscoveryConfig.preset("fast")


def test_resume_from_a_checkpoint_continues_the_same_run(toy, tmp_path, monkeypatch):
    model, target, control, blocks = toy
    cfg = DiscoveryConfig(**QUICK | {"checkpoint_every": 10, "checkpoint_dir": str(tmp_path / "a")})
    save = search.write_checkpoint

    def keep_step_10(cfg_, trained, optimizers, schedule, gen, state):
        save(cfg_, trained, optimizers, schedule, gen, state)
        if state.step == 10:
            shutil.copy(tmp_path / "a" / "checkpoint.pt", tmp_path / "step10.pt")

    monkeypatch.setattr(search, "write_checkpoint", keep_step_10)
    whole = discover(model, target, control, blocks, cfg)
    resumed = discover(model, target, control, blocks, cfg, resume=tmp_path / "step10.pt")
    assert all(torch.equal(whole.subnetwork.masks[a], resumed.subnetwork.masks[a]) for a in whole.subnetwork.masks)
    torch.testing.assert_close(torch.tensor(whole.history["loss"].values), torch.tensor(resumed.history["loss"].values))
    with pytest.raises(ValueError, match="other settings: lr 0.2 there, 0.1 now; resume with the checkpoint's"):
        discover(model, target, control, blocks, DiscoveryConfig(**QUICK | {"lr": 0.1}), resume=tmp_path / "step10.pt")
    # Settings that decide nothing the run computes may change.
    quiet = DiscoveryConfig(**QUICK | {"checkpoint_every": 0, "checkpoint_dir": None, "early_stop": True})
    again = discover(model, target, control, blocks, quiet, resume=tmp_path / "step10.pt")
    assert all(torch.equal(whole.subnetwork.masks[a], again.subnetwork.masks[a]) for a in whole.subnetwork.masks)


@pytest.mark.parametrize("changed", [{"steps": 60}, {"warmup_fraction": 0.2}, {"sparsity_start": 1.0},
                                     {"sparsity_end": 4.0}, {"target_sparsity": 0.9}, {"lagrangian_lr": 0.1},
                                     {"target_sparsity": None, "steps": 60}])
def test_a_resume_that_changes_the_schedule_is_refused_naming_the_settings(toy, tmp_path, changed):
    model, target, control, blocks = toy
    cfg = DiscoveryConfig(**QUICK | {"steps": 10, "checkpoint_every": 10, "checkpoint_dir": str(tmp_path)})
    discover(model, target, control, blocks, cfg)
    names = ", ".join(changed)
    with pytest.raises(ValueError, match=f"other settings: .*\\({names} set the warm-up and the sparsity schedule"
                                         ".*; resume with the checkpoint's settings, or start a new search"):
        discover(model, target, control, blocks, DiscoveryConfig(**cfg.to_json() | changed), resume=tmp_path)


def test_overlapping_or_mismatched_inputs_are_refused(toy):
    model, target, control, blocks = toy
    with pytest.raises(ValueError, match="also target triplets"):
        discover(model, target, target, blocks)
    with pytest.raises(ValueError, match="holds token id .* valid ids are 0.."):
        discover(model, target, control, blocks + model.cfg.d_vocab, DiscoveryConfig(**QUICK))
    with pytest.raises(TypeError, match="KnowledgeGraph or a KGBatch"):
        discover(model, ["a fact"], control, blocks)


def test_a_nan_loss_stops_with_a_warning_and_keeps_the_last_good_masks(toy, monkeypatch):
    model, target, control, blocks = toy
    losses = search.step_losses

    def nan_at_step_12(masked, data, cfg, step, gen, lagrangian):
        out = losses(masked, data, cfg, step, gen, lagrangian)
        if step == 12:
            out["loss"] = out["loss"] * math.nan
        return out

    monkeypatch.setattr(search, "step_losses", nan_at_step_12)
    with pytest.warns(RuntimeWarning, match="non-finite loss at step 12"):
        found = discover(model, target, control, blocks, DiscoveryConfig(**QUICK))
    assert found.best_step == 10 and len(found.history) == 12


def test_ctrl_c_returns_the_best_result_so_far(toy, monkeypatch):
    model, target, control, blocks = toy
    losses = search.step_losses

    def interrupt_at_step_25(masked, data, cfg, step, gen, lagrangian):
        if step == 25:
            raise KeyboardInterrupt
        return losses(masked, data, cfg, step, gen, lagrangian)

    monkeypatch.setattr(search, "step_losses", interrupt_at_step_25)
    with pytest.warns(RuntimeWarning, match="interrupted at step 25"):
        found = discover(model, target, control, blocks, DiscoveryConfig(**QUICK))
    assert found.best_step in (10, 20)
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in model.modules())


def test_lagrangian_and_hard_concrete_options_run(toy):
    model, target, control, blocks = toy
    cfg = DiscoveryConfig(**QUICK | {"relaxation": "hard_concrete", "target_sparsity": 0.9,
                                     "hooks": ("mlp.hook_post",), "weights": (), "expression_weight": 0.5})
    found = discover(model, target, control, blocks, cfg)
    assert "expression" in found.history and found.subnetwork.sites.keys() == {"blocks.1.mlp.hook_post"}


def test_the_lagrangian_holds_the_default_target_density_on_a_short_run(toy):
    """The default target_sparsity 0.985: expected density within 50% of 0.015 from step 150 to 300.

    Why 50%, not 1%: the multipliers learn by Adam ascent, whose second moment still remembers the
    starting gap (0.45 - 0.015), so near the target l1 moves slowly; the density overshoots below the
    target (to 0.010 here) and comes back over ~1,000 steps instead of sitting on it. The band
    (sparsity 0.985 +- 0.0075) still separates holding from not: with the multipliers frozen
    (lagrangian_lr 1e-6) the density stays near its initial 0.45, and the published lambda schedule
    leaves it at 0.023-0.036 over the same steps.
    """
    model, target, control, blocks = toy
    cfg = DiscoveryConfig(**QUICK | {"steps": 300})
    with pytest.warns(UserWarning, match="knows only"):  # a random model knows no facts
        held = Search(model, target, control, blocks, cfg)
    torch.manual_seed(0)  # the masks' noise comes from the global generator (discover seeds it)
    density = []
    with held:
        for _ in range(cfg.steps):
            held.step()
            density.append(held.masked.expected_density().item())
    target_density = 1 - cfg.target_sparsity
    assert all(abs(d - target_density) <= 0.5 * target_density for d in density[150:]), density[150::10]


def test_configs_saved_under_the_earlier_teacher_field_names_still_load():
    cfg = DiscoveryConfig.from_json({"reference": "fp16", "reference_top_k": 7, "reference_max_gib": 1.5})
    assert (cfg.teacher, cfg.teacher_top_k, cfg.teacher_max_gib) == ("fp16", 7, 1.5)
