"""Masks attached to a HookedTransformer: exactness, gradients, equivalences, errors."""

import copy

import pytest
import torch
from torch import nn

from kcs_tl import RELAXATIONS, HardConcrete, StraightThroughSigmoid, Subnetwork, attach_masks
from kcs_tl.adapters import fingerprint, weight_site

ALL_SITES = dict(hooks=("attn.hook_z", "mlp.hook_post"), layers=[0, 1])


def set_scores(masked, value):
    with torch.no_grad():
        for p in masked.scores.values():
            p.fill_(value)


@pytest.mark.parametrize("relaxation", sorted(RELAXATIONS))
@pytest.mark.parametrize("mode,value", [("remove", -1e4), ("keep", 1e4)])
def test_open_masks_give_identical_logits_and_detach_is_bit_identical(model, tokens, relaxation, mode, value):
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = {n: p for n, p in model.named_parameters()}
    reference = model(tokens)
    masked = attach_masks(model, relaxation=relaxation, mode=mode, **ALL_SITES)
    set_scores(masked, value)
    masked.eval()
    assert torch.equal(masked(tokens), reference)
    masked.detach()
    after = dict(model.named_parameters())
    assert after.keys() == params.keys()
    assert all(after[n] is params[n] and torch.equal(after[n], before[n]) for n in params)
    assert torch.equal(model(tokens), reference)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("relaxation", sorted(RELAXATIONS))
def test_gradients_reach_every_score(model, tokens, relaxation):
    masked = attach_masks(model, relaxation=relaxation, init_prob=0.5, **ALL_SITES)
    masked.train()
    (masked(tokens).logsumexp(-1).mean() + masked.expected_density()).backward()
    for name, p in masked.scores.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    masked.check_frozen()
    assert all(p.grad is None for p in model.parameters())


def test_weights_are_frozen_and_check_catches_a_thawed_one(model):
    masked = attach_masks(model)
    assert not any(p.requires_grad for p in model.parameters())
    model.embed.W_E.requires_grad_(True)
    with pytest.raises(RuntimeError, match="frozen"):
        masked.check_frozen()


def one_unit_removed(model, site, index, relaxation="straight_through", **options):
    """A remove-mode mask, deterministic, whose subnetwork is exactly one head or neuron."""
    masked = attach_masks(model, weights=(), hooks=(site,), layers=[1], relaxation=relaxation, **options)
    set_scores(masked, -1e4)
    with torch.no_grad():
        masked.score(f"blocks.1.{site}")[index] = 1e4
    return masked.eval()


# test_head_gate_at_zero_equals_zero_ablating_hook_z runs on both model classes in tests/test_bridge.py.


def test_neuron_gate_at_zero_equals_zeroing_w_in_column_and_bias(model, tokens):
    edited = copy.deepcopy(model)
    with torch.no_grad():
        edited.blocks[1].mlp.W_in[:, 5] = 0
        edited.blocks[1].mlp.b_in[5] = 0
    masked = one_unit_removed(model, "mlp.hook_post", 5)
    torch.testing.assert_close(masked(tokens), edited(tokens), rtol=0, atol=1e-6)


def test_per_element_mask_equals_multiplying_the_weight_by_hand(model, tokens):
    site = weight_site(model, 1, "W_in")
    mask = torch.rand(site.shape, generator=torch.Generator().manual_seed(0)) < 0.3
    sub = Subnetwork({site.address: mask}, {site.address: site}, fingerprint(model))
    edited = copy.deepcopy(model)
    with torch.no_grad():
        edited.blocks[1].mlp.W_in.mul_(~mask)
    with sub.removed(model):
        torch.testing.assert_close(model(tokens), edited(tokens), rtol=0, atol=0)


def test_row_and_column_masks_broadcast_as_documented(model, tokens):
    shapes = {(n, g): weight_site(model, 0, n, g).shape
              for n in ("W_Q", "W_O", "W_in", "W_out") for g in ("row", "column")}
    assert shapes == {
        ("W_Q", "row"): (1, 32, 1), ("W_Q", "column"): (4, 1, 8),
        ("W_O", "row"): (4, 8, 1), ("W_O", "column"): (1, 1, 32),
        ("W_in", "row"): (32, 1), ("W_in", "column"): (1, 64),
        ("W_out", "row"): (64, 1), ("W_out", "column"): (1, 32),
    }
    # Removing input row 3 of W_in equals zeroing that row by hand.
    edited = copy.deepcopy(model)
    with torch.no_grad():
        edited.blocks[1].mlp.W_in[3, :] = 0
    masked = attach_masks(model, weights=("W_in",), layers=[1], granularity="row")
    set_scores(masked, -1e4)
    with torch.no_grad():
        masked.score("blocks.1.mlp.W_in")[3, 0] = 1e4
    masked.eval()
    torch.testing.assert_close(masked(tokens), edited(tokens), rtol=0, atol=0)


def test_expected_density_counts_each_weight_a_row_gate_covers(model):
    masked = attach_masks(model, weights=("W_in",), layers=[1], granularity="column", init_prob=0.3)
    torch.testing.assert_close(masked.expected_density(), torch.tensor(0.3))


def test_hard_concrete_expected_l0_matches_monte_carlo():
    hc = HardConcrete()
    scores = torch.linspace(-4, 4, 9)
    draws = torch.stack([hc.sample(scores) for _ in range(40_000)])
    torch.testing.assert_close((draws > 0).float().mean(0), hc.density(scores), atol=0.01, rtol=0)
    assert torch.equal(hc(scores, training=False), hc(scores, training=False))
    assert torch.equal(hc.deterministic(torch.tensor([50.0, -50.0])), torch.tensor([1.0, 0.0]))


def test_straight_through_density_matches_monte_carlo_and_init_prob():
    st = StraightThroughSigmoid(temperature=0.5)
    scores = torch.full((20_000,), st.init_score(0.45))
    assert abs(st.sample(scores).mean().item() - 0.45) < 0.02
    assert set(st.sample(scores).unique().tolist()) == {0.0, 1.0}
    assert torch.equal(st(scores, training=False), torch.zeros_like(scores))


def test_step_draws_masks_once_for_every_forward_inside(model, tokens):
    masked = attach_masks(model, init_prob=0.5).train()
    with masked.step():
        assert torch.equal(masked(tokens), masked(tokens))
    assert not torch.equal(masked(tokens), masked(tokens))


def test_user_hooks_and_cache_keep_working_while_attached(model, tokens):
    masked = one_unit_removed(model, "attn.hook_z", 1)
    seen = []
    masked.model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", lambda z, hook: seen.append(z))])
    assert torch.all(seen[0][:, :, 1] == 0)
    logits, cache = model.run_with_cache(tokens)
    assert torch.all(cache["blocks.1.attn.hook_z"][:, :, 1] == 0)
    assert torch.equal(logits, masked(tokens))  # the mask survived TransformerLens's hook resets


@pytest.mark.parametrize("ablation", ["mean", "learned"])
def test_ablated_unit_takes_the_reference_mean(model, tokens, ablation):
    _, cache = model.run_with_cache(tokens)
    mean = cache["blocks.1.mlp.hook_post"].mean((0, 1))
    masked = attach_masks(model, weights=(), hooks=("mlp.hook_post",), layers=[1],
                          ablation=ablation, reference=tokens)
    set_scores(masked, -1e4)
    with torch.no_grad():
        masked.score("blocks.1.mlp.hook_post")[7] = 1e4
    masked.eval()
    _, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(cache["blocks.1.mlp.hook_post"][..., 7], mean[7].expand(3, 10))
    learned = [p for p in masked.parameters() if p.requires_grad and p.shape == (64,) and p is not
               masked.score("blocks.1.mlp.hook_post")]
    assert len(learned) == (ablation == "learned")


def test_permanent_apply_equals_the_removed_context(model, tokens):
    # apply() folds the gates into the weights, the context gates activations: the same function summed
    # in another order, so in float64, where the two agree to ~1e-15
    model = model.to(torch.float64)
    masked = attach_masks(model, hooks=("attn.hook_z", "mlp.hook_post"), init_prob=0.5,
                          ablation="mean", reference=tokens)
    with torch.no_grad():
        for p in masked.scores.values():
            p.normal_(generator=torch.Generator().manual_seed(3))
    sub = masked.to_subnetwork()
    masked.detach()
    with sub.removed(model):
        expected = model(tokens)
    edited = sub.apply(copy.deepcopy(model))
    torch.testing.assert_close(edited(tokens), expected, rtol=0, atol=1e-10)


def test_bad_inputs_name_the_valid_choices(model):
    with pytest.raises(ValueError, match="W_Q"):
        attach_masks(model, weights=("W_X",))
    with pytest.raises(ValueError, match="hook_post"):
        attach_masks(model, hooks=("mlp.hook_pre",))
    with pytest.raises(ValueError, match="0..1"):
        attach_masks(model, layers=[2])
    with pytest.raises(ValueError, match="straight_through"):
        attach_masks(model, relaxation="gumbel")
    with pytest.raises(ValueError, match="column"):
        attach_masks(model, granularity="head")
    with pytest.raises(ValueError, match="keep"):
        attach_masks(model, mode="ablate")
    with pytest.raises(ValueError, match="learned"):
        attach_masks(model, hooks=("mlp.hook_post",), ablation="resample")
    with pytest.raises(TypeError, match="HookedTransformer"):
        attach_masks(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="reference"):
        attach_masks(model, hooks=("mlp.hook_post",), ablation="mean")


def test_a_failed_attach_leaves_the_model_untouched(model, tokens):
    reference = model(tokens)
    first = attach_masks(model, weights=("W_Q",), layers=[1])
    with pytest.raises(RuntimeError, match="already carries"):
        attach_masks(model, weights=("W_K", "W_Q"), layers=[1])
    first.detach()
    assert torch.equal(model(tokens), reference)
    assert all(p.requires_grad for p in model.parameters())
    assert not model._forward_pre_hooks


def test_straight_through_gradient_is_the_sigmoid_gradient():
    st = StraightThroughSigmoid(temperature=0.7)
    scores = torch.linspace(-3, 3, 7, requires_grad=True)
    st.deterministic(scores).sum().backward()
    soft = torch.sigmoid(scores.detach() / 0.7)
    torch.testing.assert_close(scores.grad, soft * (1 - soft) / 0.7)
    assert st.deterministic(scores).tolist() == [0, 0, 0, 0, 1, 1, 1]
