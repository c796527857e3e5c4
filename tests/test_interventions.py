"""Sparse interventions: gates at their extremes, the REINFORCE estimator, attribution baselines, comparison."""

import math

import pytest
import torch

from transformer_lens import HookedTransformer, HookedTransformerConfig

from conftest import toy_tokenizer, toy_world
from kcs_tl.adapters import hook_site
from kcs_tl.analysis.methods import compare_methods
from kcs_tl.baselines.attribution import (
    UNIT_METHODS, WEIGHT_METHODS, hook_sites, replacement_values, unit_attributions, unit_baseline,
    weight_baseline,
)
from kcs_tl.interventions import (
    InterventionConfig, count_forwards, evaluate_intervention, find_interventions, gender_task, prompt_task,
)
from kcs_tl.interventions.reinforce import Bernoulli, MovingBaseline, surrogate
from kcs_tl.masks import attach_masks, mean_activations
from kcs_tl.subnetwork import Subnetwork


@pytest.fixture(scope="module")
def world():
    model, target, control, blocks = toy_world()
    prompts = [f"the colour of thing{i} is" for i in range(12)]
    task = prompt_task(model, "flip", prompts, ("red", "blue"), blocks[:8], lm_test=blocks[8:], name="toy")
    return model, task, target, control, blocks


@pytest.mark.parametrize("ablation", ["zero", "mean"])
@pytest.mark.parametrize("hook", ["mlp.hook_post", "attn.hook_z"])
def test_gates_at_their_extremes_equal_plain_ablation_with_hooks(world, ablation, hook):
    model, task, *_ = world
    tokens = task.train.tokens
    site = hook_site(model, 1, hook)
    mean = mean_activations(model, task.lm, [site])[site.address]
    plain = model.run_with_hooks(tokens, fwd_hooks=[(site.address, lambda a, hook: a * 0 + (
        mean if ablation == "mean" else 0))])
    original = model(tokens)
    masked = attach_masks(model, weights=(), hooks=(hook,), layers=(1,), relaxation="hard_concrete",
                          mode="remove", ablation=ablation, reference=task.lm)
    try:
        masked.eval()
        # gates clamp to exactly 1 or 0, so h * z + r * (1 - z) is the hook's own arithmetic; the
        # float32 bound covers the mean being read from another pass over task.lm
        with torch.no_grad():
            masked.score(site.address).fill_(20.0)  # every unit intervened on (gate 1)
            torch.testing.assert_close(model(tokens), plain, atol=1e-5, rtol=1e-5)
            masked.score(site.address).fill_(-20.0)  # gates shut: the model as it was
            torch.testing.assert_close(model(tokens), original, atol=1e-5, rtol=1e-5)
    finally:
        masked.detach()


def test_reinforce_estimator_is_unbiased_on_a_toy_objective():
    torch.manual_seed(0)
    scores = torch.tensor([-1.0, 0.3, 1.2, -0.2], requires_grad=True)
    c, d = torch.tensor([1.0, -2.0, 0.5, 3.0]), 1.5

    def f(m):  # E f = sum c p + d p0 p1: known gradient
        return (c * m).sum() + d * m[0] * m[1]

    p = torch.sigmoid(scores.detach())
    exact = c * p * (1 - p)
    exact[0] += d * p[1] * p[0] * (1 - p[0])
    exact[1] += d * p[0] * p[1] * (1 - p[1])
    relax, n, total = Bernoulli(), 20000, torch.zeros(4)
    baseline = MovingBaseline(0.9)
    for _ in range(n):
        m = relax.sample(scores)
        loss = f(m)
        g, = torch.autograd.grad(surrogate(loss, {"s": m}, {"s": scores}, baseline()), scores)
        baseline.update(loss.item())
        total += g
    torch.testing.assert_close(total / n, exact, atol=0.05, rtol=0)


def test_integrated_gradients_are_complete(world):
    model, task, *_ = world
    site = hook_site(model, 0, "mlp.hook_post")
    repl = replacement_values(model, task, [site], "mean")
    attr = unit_attributions(model, task, "integrated_gradients", [site], repl, steps=64)[site.address]
    with torch.no_grad():
        p = task.train
        sign = torch.sign(torch.ones(len(p)))
        f_h = task.objective(p.read(model(p.tokens)), p, sign)
        r = repl[site.address]
        f_r = task.objective(p.read(model.run_with_hooks(
            p.tokens, fwd_hooks=[(site.address, lambda a, hook: a * 0 + r)])), p, sign)
    assert math.isclose(attr.sum().item(), (f_h - f_r).item(), rel_tol=0.02, abs_tol=1e-3)


@pytest.mark.parametrize("method", UNIT_METHODS)
def test_every_unit_baseline_has_exactly_the_requested_size(world, method):
    model, task, *_ = world
    sub = unit_baseline(model, task, method, size=7, hooks=("mlp.hook_post", "attn.hook_z"), steps=2)
    assert sub.n_in_subnetwork() == 7
    like = unit_baseline(model, task, "random", size=9, seed=3)
    matched = unit_baseline(model, task, method, like=like, steps=2)
    assert {a: int(m.sum()) for a, m in matched.masks.items()} == {a: int(m.sum()) for a, m in like.masks.items()}


@pytest.mark.parametrize("method", WEIGHT_METHODS)
@pytest.mark.parametrize("granularity", ["weight", "row"])
def test_every_weight_baseline_matches_per_site_counts(world, method, granularity):
    model, task, *_ = world
    masked = attach_masks(model, weights=("W_in", "W_Q"), layers=(1,), granularity=granularity)
    with torch.no_grad():
        for s in masked.scores.values():
            s.copy_(torch.randn(s.shape))
    like = masked.to_subnetwork()
    masked.detach()
    p = task.train

    def objective(m):
        return m(p.tokens)[:, -1, 0].sum()

    sub = weight_baseline(model, like, method, objective)
    assert {a: int(m.sum()) for a, m in sub.masks.items()} == {a: int(m.sum()) for a, m in like.masks.items()}


def test_find_interventions_leaves_the_model_as_it_was_and_reports_its_cost(world):
    model, task, *_ = world
    before = {n: p.clone() for n, p in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    for method in ("hard_concrete", "reinforce"):
        r = find_interventions(model, task, InterventionConfig(method=method, steps=4, eval_every=2,
                                                               ablation="learned", target_units=5))
        assert isinstance(r.subnetwork, Subnetwork) and r.forward_passes >= 8 and len(r.history) == 2
        assert set(r.effect.table.index) >= {"original", "intervened", "random"}
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags and not model.hook_dict["blocks.0.mlp.hook_post"]._forward_hooks


PLANTED = {"blocks.0.mlp.hook_post": [3], "blocks.1.mlp.hook_post": [6, 12]}


def planted_task():
    """A hand-set model whose preference for "red" over "blue" after "is" is carried by the PLANTED neurons.

    No attention output, no norms. The token "is" writes residual dim 0 only; each planted neuron reads
    dim 0 and adds 2 to logit(red) (through dim 1), and dim 0 adds 1 to logit(blue). So "red" wins by
    5, still by 1 with two planted neurons removed, and loses only when all three are: no other set of
    three flips it. Every other neuron reads and writes dims 2.. only, so it is silent after "is" but
    shapes the predictions on the LM blocks (random tokens without "is"), where removing it costs KL.
    """
    tok = toy_tokenizer()
    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=16, d_head=4, n_heads=4, d_mlp=16,
                                  d_vocab=len(tok), act_fn="relu", normalization_type=None, seed=0)
    model = HookedTransformer(cfg, tokenizer=tok).eval()
    trigger, red, blue = (tok.get_vocab()[w] for w in ("is", "red", "blue"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.W_E[:, 2:] = torch.randn(cfg.d_vocab, 14, generator=g)
        model.W_E[trigger] = 0
        model.W_E[trigger, 0] = 1
        for block in model.blocks:
            block.mlp.W_in[2:] = torch.randn(14, 16, generator=g) / 14**0.5
            block.mlp.W_out[:, 2:] = torch.randn(16, 14, generator=g) / 16**0.5
        for address, neurons in PLANTED.items():
            mlp = model.blocks[int(address.split(".")[1])].mlp
            mlp.W_in[:, neurons] = 0
            mlp.W_in[0, neurons] = 1
            mlp.W_out[neurons] = 0
            mlp.W_out[neurons, 1] = 2
        model.W_U[2:] = torch.randn(14, cfg.d_vocab, generator=g)
        model.W_U[2:, [red, blue]] = 0
        model.W_U[1, red] = model.W_U[0, blue] = 1
    others = torch.tensor([i for i in range(cfg.d_vocab) if i != trigger])
    lm = others[torch.randint(len(others), (24, 16), generator=g)]
    prompts = [f"the colour of thing{i} is" for i in range(12)]
    return model, prompt_task(model, "flip", prompts, ("red", "blue"), lm[:16], lm_test=lm[16:], name="planted")


def test_find_interventions_recovers_a_planted_mechanism_that_random_units_miss():
    """Three units held by the Lagrangian: the search finds exactly the planted neurons.

    Margin: the found set flips every prompt (accuracy 1 -> 0) at no LM cost, while each of 20
    random sets of the same per-layer counts flips none (accuracy stays 1; a random set holds all
    three planted neurons with chance 1/16 * 1/120) and costs KL on the LM blocks.
    """
    model, task = planted_task()
    r = find_interventions(model, task, InterventionConfig(target_units=3, steps=50, eval_every=25), n_random=20)
    found = {a: torch.nonzero(m).flatten().tolist() for a, m in r.subnetwork.masks.items() if m.any()}
    assert found == PLANTED
    effect = r.effect.value
    assert effect("original", "test_accuracy") == 1 and effect("intervened", "test_accuracy") == 0
    assert effect("random", "test_accuracy") - effect("intervened", "test_accuracy") == 1
    # KL to the original on the held-out LM blocks: float32 noise only (|KL| < 1e-5) for silent units
    assert abs(effect("intervened", "lm_kl")) < 1e-5 < 0.01 < effect("random", "lm_kl")


def test_compare_methods_gives_one_row_per_method_and_size(world):
    model, task, *_ = world
    methods = ("hard_concrete", "reinforce", "integrated_gradients", "grad_x_activation", "activation", "random")
    table = compare_methods(model, task, methods, sizes=[3, 6],
                            config=InterventionConfig(steps=3, eval_every=3), ig_steps=2)
    assert len(table) == 12 and set(zip(table.method, table["size"])) == {(m, s) for m in methods for s in (3, 6)}
    assert {"target_effect", "control_damage", "lm_damage", "wall_s", "forward_passes"} <= set(table.columns)
    baselines = table[~table.method.isin(["hard_concrete", "reinforce"])]
    hc = table[table.method == "hard_concrete"].set_index("size").n_units
    assert all(row.n_units == hc[row.size] for row in baselines.itertuples())


def test_compare_methods_on_knowledge_suppression(world):
    from kcs_tl.discovery import DiscoveryConfig
    from kcs_tl.zoo.task import Task

    model, task, target, control, blocks = world
    config = DiscoveryConfig(steps=3, eval_every=3, progress=False, kg_batch_size=8, lm_batch_size=2,
                             layers=(1,), weights=("W_in", "W_out"))
    table = compare_methods(model, Task("toy", target, control, blocks), config=config)
    assert list(table.method) == ["discover", "weight_magnitude", "grad_x_weight", "random"]
    assert table.n_units.nunique() == 1


def test_count_forwards_counts_calls_and_rows(world):
    model, task, *_ = world
    with count_forwards(model) as n:
        model(task.train.tokens)
        model.run_with_hooks(task.train.tokens[:2])
        model.run_with_cache(task.train.tokens[:1])
    assert (n.calls, n.sequences) == (3, len(task.train) + 3)
    sites = hook_sites(model)
    with count_forwards(model) as n:
        unit_attributions(model, task, "integrated_gradients", sites, {}, steps=3)
    assert n.calls == 1 + 3 * len(sites)  # one cache, then one pass per point and site


def test_gender_task_can_hold_professions_out_of_the_search(builtin):
    z = builtin[0]
    task = gender_task(z, held_out=("nurse", "baker"))
    assert not any(" nurse " in t or " baker " in t for t in task.train.text)
    assert len(task.test) == 10 and all(" nurse " in t or " baker " in t for t in task.test.text)


def test_bad_inputs_say_what_is_valid(world, builtin):
    model, task, *_ = world
    with pytest.raises(ValueError, match="InterventionConfig.method must be one of"):
        InterventionConfig(method="sgd")
    with pytest.raises(ValueError, match="InterventionConfig.ablation"):
        InterventionConfig(ablation="noise")
    with pytest.raises(TypeError, match="task must be an InterventionTask"):
        find_interventions(model, "agreement")
    with pytest.raises(ValueError, match="kind must be one of"):
        prompt_task(model, "swap", ["the colour of thing1 is"], ("red", "blue"), task.lm)
    with pytest.raises(ValueError, match="one token"):
        prompt_task(model, "flip", ["the colour of thing1 is"], ("red", "red blue"), task.lm)
    with pytest.raises(ValueError, match="target_units=999"):
        find_interventions(model, task, InterventionConfig(target_units=999, steps=1))
    with pytest.raises(ValueError, match="exactly one of like= .* or size="):
        unit_baseline(model, task, "random")
    with pytest.raises(ValueError, match="methods holds unknown"):
        compare_methods(model, task, ["magic"], sizes=[2])
    with pytest.raises(ValueError, match="held_out holds unknown name"):
        gender_task(builtin[0], held_out=("astronaut",))
    with pytest.raises(TypeError, match="subnetwork must be a Subnetwork"):
        evaluate_intervention(model, task, None)


def test_cli_verb_writes_one_result_folder_and_refuses_bad_input(tmp_path, capsys):
    from kcs_tl.cli import main

    out = tmp_path / "iv"
    main(["interventions", "--task", "gender", "--method", "activation", "--units", "5", "--n-random", "0",
          "--layers", "0,1", "--out", str(out)])
    assert {p.name for p in out.iterdir()} >= {"subnetwork", "effect.csv", "summary.html"}
    assert Subnetwork.load(out / "subnetwork").n_in_subnetwork() == 5
    assert "5 units" in capsys.readouterr().out
    for argv, message in [(["--method", "random"], "needs --units"),
                          (["--units", "5", "--out", str(out)], "already"),
                          (["--units", "5", "--ablation", "learned", "--method", "random", "--steps", "0"],
                           "InterventionConfig.steps")]:
        with pytest.raises(SystemExit) as err:
            main(["interventions", "--task", "gender", *argv, *(["--out", str(tmp_path / "x")] if "--out" not in argv else [])])
        assert err.value.code == 2 and message in capsys.readouterr().err
