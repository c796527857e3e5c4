"""Analysis: components, knowledge prompts, patching (exact, batched neurons, attribution), comparison."""

import math

import numpy as np
import pytest
import torch
import transformer_lens.patching as tl_patching
from transformer_lens import HookedTransformer, HookedTransformerConfig

from kcs_tl import Subnetwork
from kcs_tl.adapters import fingerprint, hook_site, weight_site
from kcs_tl.analysis import (
    attention_view, attribute, compare, components, heatmaps, knowledge_prompts, logprob_view, patch, plot_overlap,
    report, roc_auc, spearman, topk_view,
)
from kcs_tl.analysis.answer_metrics import answer_logits, answer_metric
from kcs_tl.analysis.comparison import overlap_at_k
from kcs_tl.analysis.neuron_patching import patch_neurons, patch_neurons_looped

from conftest import tiny_model, toy_tokenizer, toy_world


def _subnetwork(model, masks: dict) -> Subnetwork:
    sites = {a: (weight_site(model, int(a.split(".")[1]), a.split(".")[-1]) if "W_" in a
                 else hook_site(model, int(a.split(".")[1]), ".".join(a.split(".")[2:])))
             for a in masks}
    return Subnetwork(masks, sites, fingerprint(model))


def test_components_aggregate_a_hand_made_mask_to_known_fractions(model):
    n_heads, d_model, d_head, d_mlp = 4, 32, 8, 64
    q = torch.zeros(n_heads, d_model, d_head, dtype=torch.bool)
    q[1, :16] = True  # half of head 1's W_Q
    o = torch.zeros(n_heads, d_head, d_model, dtype=torch.bool)
    o[1] = True  # all of head 1's W_O
    w_in = torch.zeros(d_model, d_mlp, dtype=torch.bool)
    w_in[:8, 5] = True  # a quarter of neuron 5's input column
    w_out = torch.zeros(d_mlp, d_model, dtype=torch.bool)
    w_out[5] = True
    heads_only = torch.zeros(n_heads, dtype=torch.bool)
    heads_only[3] = True
    sub = _subnetwork(model, {"blocks.1.attn.W_Q": q, "blocks.1.attn.W_O": o, "blocks.1.mlp.W_in": w_in,
                              "blocks.1.mlp.W_out": w_out, "blocks.0.attn.hook_z": heads_only})
    t = components(sub).set_index("component")
    assert len(t) == 4 + 4 + 64
    assert t.loc["L1H1", "frac_W_Q"] == 0.5 and t.loc["L1H1", "frac_W_O"] == 1.0
    assert t.loc["L1H1", "fraction"] == pytest.approx((128 + 256) / 512)
    assert t.loc["L1H0", "fraction"] == 0 and math.isnan(t.loc["L1H0", "frac_W_in"])
    assert t.loc["L1N5", "frac_W_in"] == 0.25 and t.loc["L1N5", "frac_W_out"] == 1.0
    assert t.loc["L1N5", "fraction"] == pytest.approx(40 / 64) and t.loc["L1N4", "fraction"] == 0
    assert t.loc["L0H3", "fraction"] == 1.0 and t.loc["L0H2", "fraction"] == 0  # head masks map directly
    assert set(t.kind) == {"head", "neuron"} and t.loc["L1N5", "layer"] == 1


@pytest.fixture
def prompts(toy):
    """The toy world's knowledge prompts, on its model in float64: the patchers compared below compute
    the same effects in other orders (batched, chunked, by TransformerLens), which float32 shows."""
    model, target, control, _ = toy
    model = model.to(torch.float64)
    return model, knowledge_prompts(model, target, pool=control)


def test_knowledge_prompts_pair_each_fact_with_a_same_length_counterfactual(prompts):
    model, p = prompts
    assert len(p) == 6 and not p.dropped
    assert p.clean.shape == p.swapped.shape
    for i, (fact, partner) in enumerate(zip(p.facts, p.counterfactuals)):
        assert partner.relation == fact.relation and partner.tail != fact.tail
        differs = (p.clean[i] != p.swapped[i]).nonzero().flatten().tolist()
        assert differs == p.subject[i].nonzero().flatten().tolist()  # only the subject changes
        assert model.tokenizer.decode(p.gold[i]) == fact.tail
    assert (p.noise.abs().sum(-1) > 0).equal(p.subject)  # noise only on the subject
    std = float(model.W_E.detach().std())
    assert float(p.noise[p.subject].std()) == pytest.approx(3 * std, rel=0.2)


def test_head_patching_equals_transformer_lens(prompts):
    model, p = prompts
    ours = patch(model, p, "head", "logit_diff", "swap")
    clean_logits, cache = model.run_with_cache(p.clean)
    fn = answer_metric("logit_diff", p.gold, p.counter, answer_logits(clean_logits, p.answer_pos))
    theirs = tl_patching.get_act_patch_attn_head_out_all_pos(
        model, p.swapped, cache, lambda logits: fn(answer_logits(logits, p.answer_pos)))
    # float64 effects that agree to ~1e-14, each rounded to float32 by its metric: one ulp apart at most
    torch.testing.assert_close(torch.tensor(ours.matrix("value").to_numpy(), dtype=torch.float64), theirs.double(),
                               rtol=2.4e-7, atol=1e-9)
    restored = patch(model, p, "attn_layer", "kl", "noise")
    assert restored.clean == 0 and restored.corrupted > 0 and len(restored.table) == 2


def test_batched_neuron_patcher_equals_one_neuron_at_a_time(prompts):
    model, p = prompts
    for corruption in ("swap", "noise"):
        tokens, hooks = p.corrupted(corruption)
        clean_logits, cache = model.run_with_cache(p.clean)
        fn = answer_metric("logprob", p.gold, p.counter, answer_logits(clean_logits, p.answer_pos))
        clean = {0: cache["post", 0]}
        batched = patch_neurons(model, tokens, clean, fn, p.answer_pos, [0], hooks, max_memory_mb=0.05)
        looped = patch_neurons_looped(model, tokens, clean, fn, p.answer_pos, [0], hooks)
        # both in float64, rounded to float32 by the same code at the end: one ulp apart at most
        torch.testing.assert_close(batched, looped, rtol=2.4e-7, atol=1e-9, msg=corruption)
    result = patch(model, p, "neuron", layers=[1])
    assert list(result.table.component[:2]) == ["L1N0", "L1N1"] and len(result.table) == 64


def test_attribution_equals_exact_patching_where_the_metric_is_linear_in_the_activation():
    # No layer norms: the last MLP's neurons reach the logits linearly, and the logit
    # difference is linear in the logits. Heads of the last layer too, once its MLP
    # no longer reads them (W_in = 0).
    tok = toy_tokenizer()
    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_mlp=64,
                                  d_vocab=len(tok), act_fn="gelu", normalization_type=None, seed=3)
    model = HookedTransformer(cfg, tokenizer=tok).eval()
    _, target, control, _ = toy_world()
    p = knowledge_prompts(model, target, pool=control)

    def gap(granularity, layer):
        exact = patch(model, p, granularity, "logit_diff", layers=[layer]).table.value
        return np.abs(exact - attribute(model, p, granularity, "logit_diff", layers=[layer]).table.value).max()

    assert max(gap(g, 1) for g in ("neuron", "mlp_layer", "mlp_pos")) < 1e-6
    assert gap("head", 0) > 1e-5  # through later layers the metric is not linear: only an estimate
    with torch.no_grad():
        model.blocks[1].mlp.W_in.zero_()
    assert max(gap(g, 1) for g in ("head", "attn_layer", "attn_pos")) < 1e-6


def test_comparison_metrics_on_toy_rankings():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert roc_auc([True, True, False, False], [0.9, 0.8, 0.1, 0.2]) == 1.0
    assert roc_auc([True, False, True, False], [0.9, 0.8, 0.1, 0.2]) == 0.5
    assert roc_auc([True, False], [0.5, 0.5]) == 0.5 and math.isnan(roc_auc([True, True], [1, 2]))
    table = overlap_at_k([True, False, True, False, False], [5, 4, 3, 2, 1], [1, 2, 3, 5]).set_index("k")
    assert table.loc[1].tolist() == [1.0, 0.5, 0.5]  # precision, recall, jaccard
    assert table.loc[3].tolist() == pytest.approx([2 / 3, 1.0, 2 / 3])
    assert table.loc[5].tolist() == pytest.approx([0.4, 1.0, 0.4])


def test_compare_puts_a_subnetwork_beside_random_ones_of_the_same_size(prompts):
    model, p = prompts
    heads = patch(model, p, "neuron", layers=[1])
    top = heads.table.effect.abs().nlargest(6).index  # a subnetwork made of patching's top neurons
    mask = torch.zeros(64, dtype=torch.bool)
    mask[torch.tensor(heads.table.loc[top, "index"].tolist())] = True
    sub = _subnetwork(model, {"blocks.1.mlp.hook_post": mask})
    result = compare(sub, heads, n_random=10)
    assert result.value("roc_auc") == 1.0 and result.value("precision", 6) == 1.0
    assert result.value("roc_auc", source="random") < 0.8
    assert set(result.summary().metric) == {"spearman", "roc_auc", "precision@10", "precision@6", "jaccard@6"}
    fig = plot_overlap(result, "precision")
    assert fig.axes[0].get_xlabel().startswith("k (top-k neurons")
    with pytest.raises(ValueError, match="share no component"):
        compare(sub, patch(model, p, "neuron", layers=[0]))
    with pytest.raises(ValueError, match="patching.granularity must be one of"):
        compare(sub, patch(model, p, "mlp_layer"))


def _mlp_subnetwork(model):
    return _subnetwork(model, {"blocks.1.mlp.hook_post": torch.arange(64) < 5})


BAD_INPUTS = [
    (lambda m, g, p: knowledge_prompts(m, "facts"), TypeError, r"graph must be a KnowledgeGraph, got 'facts'"),
    (lambda m, g, p: knowledge_prompts(m, g, pool=["x"]), TypeError, r"pool must be None, a KnowledgeGraph or a list"),
    (lambda m, g, p: knowledge_prompts(m, g, noise_scale=-1), ValueError, r"noise_scale must be a finite number >= 0"),
    (lambda m, g, p: knowledge_prompts(m, g.subset(list(g)[:1])), ValueError, r"no fact of .* has a counterfactual"),
    (lambda m, g, p: patch(m, p, "layer"), ValueError, r"granularity must be one of \('head', 'neuron'"),
    (lambda m, g, p: patch(m, p, metric="acc"), ValueError, r"metric must be one of \('logprob', 'logit_diff', 'kl'\)"),
    (lambda m, g, p: attribute(m, p, corruption="blur"), ValueError, r"corruption must be one of \('swap', 'noise'\)"),
    (lambda m, g, p: patch(m, p, layers=[5]), ValueError, r"layers \[5\] out of range: this model has layers 0\.\.1"),
    (lambda m, g, p: patch(m, "prompts"), TypeError, r"prompts must be KnowledgePrompts"),
    (lambda m, g, p: patch(m, p, "neuron", max_memory_mb=0), ValueError, r"max_memory_mb must be a finite number > 0"),
    (lambda m, g, p: components("sub"), TypeError, r"subnetwork must be a Subnetwork, got 'sub'"),
    (lambda m, g, p: compare(_mlp_subnetwork(m), "patching"), TypeError, r"patching must be a PatchingResult"),
    (lambda m, g, p: compare(_mlp_subnetwork(m), patch(m, p, "neuron", layers=[1]), n_random=-1), ValueError,
     r"n_random must be an int >= 0, got -1"),
    (lambda m, g, p: compare(_mlp_subnetwork(m), patch(m, p, "neuron", layers=[1]), ks=[0]), ValueError,
     r"ks\[0\] must be an int in \[1, 64\], got 0"),
    (lambda m, g, p: attention_view(m, _mlp_subnetwork(m), "A sentence"), ValueError,
     r"sentences must be a non-empty list of non-empty strings"),
    (lambda m, g, p: attention_view(m, _mlp_subnetwork(m), ["thing1 is red"], n_heads=0), ValueError,
     r"n_heads must be an int in \[1, 8\], got 0"),
    (lambda m, g, p: logprob_view(m, _mlp_subnetwork(m), ["thing1 is red"]), TypeError,
     r"sets must be a non-empty dict name -> list of sentences"),
    (lambda m, g, p: topk_view(m, _subnetwork(m, {"blocks.1.attn.hook_z": torch.ones(4, dtype=torch.bool)}),
                               ["thing1 is red"]), ValueError, r"masks no MLP neuron"),
    (lambda m, g, p: heatmaps(components(_mlp_subnetwork(m)), n_buckets=0), ValueError,
     r"n_buckets must be an int >= 1"),
    (lambda m, g, p: report(m, _mlp_subnetwork(m), g, "/nowhere/at/all/report.html"), FileNotFoundError,
     r"folder /nowhere/at/all does not exist"),
]


@pytest.mark.parametrize("call, error, message", BAD_INPUTS, ids=[f"analysis-{i}" for i in range(len(BAD_INPUTS))])
def test_bad_analysis_input(call, error, message, prompts, toy):
    model, p = prompts
    with pytest.raises(error, match=message) as info:
        call(model, toy[1], p)
    assert "\n" not in str(info.value)
