"""TransformerBridge support: the same masks, gradients, ablations and results as on HookedTransformer.

Runs under TransformerLens 3.9 (both classes; cross-class comparisons) and 4.x
(bridge only: HookedTransformer no longer exists there, so the hooked variants
are not collected). Every bridge is built offline from a Hugging Face model in
memory, never downloaded.
"""


import pytest
import torch
from torch import nn

import kcs_tl
from kcs_tl import Subnetwork, attach_masks, discover, evaluate, zoo
from kcs_tl.adapters import adapter, fingerprint, hooked, weight_site, weight_view
from kcs_tl.adapters.bridge import TransformerBridge, wrap
from kcs_tl.discovery import DiscoveryConfig
from kcs_tl.zoo.bridge import gpt2

from test_masks import one_unit_removed, set_scores

HAS_HOOKED = hooked.HookedTransformer is not None
CLASSES = ["hooked", "bridge"] if HAS_HOOKED else ["bridge"]  # TransformerLens 4.x: the bridge only
needs_hooked = pytest.mark.skipif(not HAS_HOOKED, reason="compares with HookedTransformer (TransformerLens 3.x)")
CFG = dict(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_mlp=64, d_vocab=50, act_fn="gelu",
           normalization_type="LN", positional_embedding_type="standard")
CROSS_CLASS = dict(rtol=0, atol=1e-10)  # float64 outputs of the two classes (see build())
ALL_SITES = dict(hooks=("attn.hook_z", "mlp.hook_post"), layers=[0, 1])


def random_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in TransformerLens layout (what a HookedTransformer of CFG stores)."""
    g = torch.Generator().manual_seed(seed)
    c = CFG
    shapes = {"embed.W_E": (c["d_vocab"], c["d_model"]), "pos_embed.W_pos": (c["n_ctx"], c["d_model"]),
              "ln_final.w": (c["d_model"],), "ln_final.b": (c["d_model"],),
              "unembed.W_U": (c["d_model"], c["d_vocab"]), "unembed.b_U": (c["d_vocab"],)}
    for i in range(c["n_layers"]):
        h, d, m, e = c["n_heads"], c["d_model"], c["d_mlp"], c["d_head"]
        shapes |= {f"blocks.{i}.{k}": v for k, v in {
            "ln1.w": (d,), "ln1.b": (d,), "ln2.w": (d,), "ln2.b": (d,),
            "attn.W_Q": (h, d, e), "attn.W_K": (h, d, e), "attn.W_V": (h, d, e), "attn.W_O": (h, e, d),
            "attn.b_Q": (h, e), "attn.b_K": (h, e), "attn.b_V": (h, e), "attn.b_O": (d,),
            "mlp.W_in": (d, m), "mlp.b_in": (m,), "mlp.W_out": (m, d), "mlp.b_out": (d,)}.items()}
    state = {k: torch.randn(v, generator=g) * 0.3 for k, v in shapes.items()}
    for k in state:
        if k.endswith(".w"):
            state[k] = 1 + state[k] * 0.3
    return state


def build(model_class: str, tokenizer=None, seed: int = 0):
    """A tiny GPT-2-style model of ``model_class`` with the weights of ``random_state(seed)``, in float64.

    The two classes compute the same function through other modules, so their sums run in
    another order: in float32 the logits differ by about 2e-6, an amount that depends on the
    CPU. In float64 they agree to about 5e-15, so the cross-class comparisons below allow
    ``CROSS_CLASS`` (1e-10) and still fail on any real difference (a wrong weight moves
    logits by more than 1e-3).
    """
    state = {k: v.double() for k, v in random_state(seed).items()}
    if model_class == "bridge":
        return wrap(gpt2(CFG, state).double(), tokenizer).eval()
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    model = HookedTransformer(HookedTransformerConfig(**CFG, dtype=torch.float64), tokenizer=tokenizer)
    model.load_state_dict(state, strict=False)
    return model.eval()


@pytest.fixture(params=CLASSES)
def model(request):
    return build(request.param)


@pytest.fixture
def twins():
    if not HAS_HOOKED:
        pytest.skip("compares with HookedTransformer (TransformerLens 3.x)")
    return build("hooked"), build("bridge")


@pytest.fixture
def tokens():
    return torch.randint(0, 50, (3, 10), generator=torch.Generator().manual_seed(1))


def random_subnetwork(model, granularity="weight", hooks=(), seed=0) -> Subnetwork:
    masked = attach_masks(model, hooks=hooks, layers=[0, 1], granularity=granularity)
    with torch.no_grad():
        for p in masked.scores.values():
            p.normal_(generator=torch.Generator().manual_seed(seed))
    sub = masked.to_subnetwork()
    masked.detach()
    return sub


# -- the two classes compute the same thing ---------------------------------------------


def test_bridge_of_the_same_weights_gives_the_same_logits_and_canonical_weights(twins, tokens):
    ht, br = twins
    assert isinstance(br, TransformerBridge) and adapter(br).__name__.endswith("bridge")
    torch.testing.assert_close(br(tokens), ht(tokens), **CROSS_CLASS)
    assert fingerprint(br) == fingerprint(ht)
    for name in ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out"):
        site = weight_site(ht, 1, name)
        assert weight_site(br, 1, name) == site
        assert torch.equal(weight_view(br, site), weight_view(ht, site)), name


@pytest.mark.parametrize("granularity", ["weight", "row", "column"])
def test_a_subnetwork_gives_the_same_numbers_on_both_classes(twins, tokens, granularity):
    ht, br = twins
    sub = random_subnetwork(ht, granularity, hooks=("attn.hook_z", "mlp.hook_post"))
    assert 0 < sub.n_in_subnetwork() < sum(s.expanded(a).numel() for a, s in [(a, sub) for a in sub.masks])
    for context in ("removed", "kept_only"):
        with getattr(sub, context)(ht):
            expected = ht(tokens)
        with getattr(sub, context)(br):
            torch.testing.assert_close(br(tokens), expected, **CROSS_CLASS)
    assert not torch.allclose(expected, ht(tokens))  # the masks did change the output


def test_a_saved_subnetwork_loads_and_applies_to_the_other_class(twins, tokens, tmp_path):
    ht, br = twins
    random_subnetwork(br, hooks=("mlp.hook_post",)).save(tmp_path / "sub")
    sub = Subnetwork.load(tmp_path / "sub", model=ht)
    with sub.removed(ht):
        expected = ht(tokens)
    torch.testing.assert_close(sub.apply(build("bridge"))(tokens), expected, **CROSS_CLASS)


# -- weight masks act on the modules that compute --------------------------------------


def test_weight_masks_multiply_the_computing_modules_in_their_own_orientation(tokens):
    """q/k/v are nn.Linear copies ([out, in]); o and the MLP are Conv1D ([in, out])."""
    br = build("bridge")
    g = torch.Generator().manual_seed(0)
    edited = build("bridge")  # a bridge does not deepcopy once it has run
    masks, sites = {}, {}
    block = edited.blocks[1]
    by_hand = {"W_Q": (block.attn.q, lambda m: m.permute(0, 2, 1).reshape(32, 32)),  # [h*d_head, d_model]
               "W_O": (block.attn.o, lambda m: m.reshape(32, 32)),  # [h*d_head, d_model]
               "W_in": (block.mlp.__getattr__("in"), lambda m: m),  # [d_model, d_mlp]
               "W_out": (block.mlp.out, lambda m: m)}
    assert isinstance(block.attn.q.original_component, nn.Linear)
    assert type(block.mlp.out.original_component).__name__ == "Conv1D"
    for name, (component, stored) in by_hand.items():
        site = weight_site(br, 1, name)
        masks[site.address] = torch.rand(site.shape, generator=g) < 0.4
        sites[site.address] = site
        with torch.no_grad():
            component.original_component.weight.mul_(stored(~masks[site.address]).to(torch.float32))
    sub = Subnetwork(masks, sites, fingerprint(br))
    with sub.removed(br):
        torch.testing.assert_close(br(tokens), edited(tokens), rtol=0, atol=1e-6)
    torch.testing.assert_close(sub.apply(build("bridge"))(tokens), edited(tokens), rtol=0, atol=1e-6)


@pytest.mark.parametrize("processing", [False, True])
def test_masks_act_the_same_in_compatibility_mode(tokens, processing):
    """enable_compatibility_mode() (3.x hook names; folded norms unless no_processing) keeps the computing modules."""
    def compat():
        br = build("bridge")
        br.enable_compatibility_mode(no_processing=not processing)
        return br

    br, by_hand = compat(), compat()
    site = weight_site(br, 1, "W_Q")
    mask = torch.rand(site.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    with torch.no_grad():
        by_hand.blocks[1].attn.q.original_component.weight.mul_(~mask.permute(0, 2, 1).reshape(32, 32))
    with Subnetwork({site.address: mask}, {site.address: site}, fingerprint(br)).removed(br):
        torch.testing.assert_close(br(tokens), by_hand(tokens), rtol=0, atol=1e-6)
    masked = one_unit_removed(br, "attn.hook_z", 2)
    _, cache = br.run_with_cache(tokens, names_filter=lambda n: n == "blocks.1.attn.hook_z")
    assert torch.all(cache["blocks.1.attn.hook_z"][:, :, 2] == 0) and cache["blocks.1.attn.hook_z"].abs().sum() > 0
    masked.detach()


def test_llama_style_bridge_masks_its_linear_projections(tokens):
    """Llama keeps q/k/v/o and the gated MLP as nn.Linear ([out, in]); grouped-query K/V; RMSNorm, rotary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    def llama():
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                             architectures=["LlamaForCausalLM"])
        return wrap(LlamaForCausalLM(config).eval())

    br, by_hand = llama(), llama()
    g = torch.Generator().manual_seed(0)
    masks, sites = {}, {}
    assert kcs_tl.architecture(br).weights == ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out", "W_gate")
    for name, component, stored in (("W_K", by_hand.blocks[1].attn.k, lambda m: m.permute(0, 2, 1).reshape(16, 32)),
                                    ("W_O", by_hand.blocks[1].attn.o, lambda m: m.reshape(32, 32).T),
                                    ("W_in", getattr(by_hand.blocks[1].mlp, "in"), lambda m: m.T),
                                    ("W_gate", by_hand.blocks[1].mlp.gate, lambda m: m.T),
                                    ("W_out", by_hand.blocks[1].mlp.out, lambda m: m.T)):
        site = weight_site(br, 1, name)
        sites[site.address], masks[site.address] = site, torch.rand(site.shape, generator=g) < 0.5
        with torch.no_grad():
            component.original_component.weight.mul_(stored(~masks[site.address]))
    with Subnetwork(masks, sites, fingerprint(br)).removed(br):
        torch.testing.assert_close(br(tokens), by_hand(tokens), rtol=0, atol=1e-6)
    masked = attach_masks(br, relaxation="sigmoid", init_prob=0.5, **ALL_SITES).train()
    masked(tokens).logsumexp(-1).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in masked.scores.values())


def test_open_masks_give_identical_logits_and_detach_is_bit_identical(model, tokens):
    params = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    reference = model(tokens)
    masked = attach_masks(model, **ALL_SITES)
    set_scores(masked, -1e4)
    masked.eval()
    assert torch.equal(masked(tokens), reference)
    masked.detach()
    after = dict(model.named_parameters())
    assert all(after[n] is params[n] and torch.equal(after[n], before[n]) for n in params)
    assert torch.equal(model(tokens), reference)


# -- neuron and head masks through the hook points -------------------------------------


def test_mask_gradients_arrive_at_every_score(model, tokens):
    # Soft gates: a hard draw may remove every head of a layer, and then its weights rightly get no gradient.
    masked = attach_masks(model, relaxation="sigmoid", init_prob=0.5, **ALL_SITES).train()
    (masked(tokens).logsumexp(-1).mean() + masked.expected_density()).backward()
    for name, p in masked.scores.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    masked.check_frozen()


def test_mask_gradients_are_the_same_on_both_classes(twins, tokens):
    grads = []
    for m in twins:
        # the sigmoid relaxation's training draw is deterministic, so both classes see the same masks
        # (eval mode computes with the binary masks, which carry no gradient)
        masked = attach_masks(m, relaxation="sigmoid", init_prob=0.5, **ALL_SITES).train()
        masked(tokens).log_softmax(-1)[..., 3].sum().backward()
        grads.append({k: p.grad for k, p in masked.scores.items()})
        masked.detach()
    # The float64 backward of the two classes agrees to ~1e-15; the scores are float32, so each
    # gradient is rounded to float32 at the mask's cast: at most one float32 ulp apart (1.2e-7 relative).
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=3e-7, atol=1e-12)


def test_head_gate_at_zero_equals_zero_ablating_hook_z(model, tokens):
    """On either class (this test moved here from test_masks.py to run on both)."""
    def zero_head(z, hook):
        z[:, :, 2] = 0
        return z

    expected = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", zero_head)])
    assert not torch.allclose(expected, model(tokens))
    masked = one_unit_removed(model, "attn.hook_z", 2)
    torch.testing.assert_close(masked(tokens), expected, rtol=0, atol=1e-6)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n == "blocks.1.attn.hook_z")
    assert torch.all(cache["blocks.1.attn.hook_z"][:, :, 2] == 0)  # user caches see the masked activation


@pytest.mark.parametrize("hook,index", [("attn.hook_z", 1), ("mlp.hook_post", 7)])
def test_ablations_change_the_output_exactly_as_on_hooked_transformer(twins, tokens, hook, index):
    outputs = []
    for m in twins:
        masked = one_unit_removed(m, hook, index, ablation="mean", reference=tokens)
        outputs.append(masked(tokens))
        masked.detach()
    torch.testing.assert_close(outputs[1], outputs[0], **CROSS_CLASS)


@pytest.mark.parametrize("granularity", ["weight", "row"])
def test_weight_attributions_are_the_same_on_both_classes(twins, tokens, granularity):
    from kcs_tl.baselines import weight_attributions

    scores = []
    for m in twins:
        sites = [weight_site(m, 1, name, granularity) for name in ("W_Q", "W_K", "W_O", "W_in", "W_out")]
        scores.append({method: weight_attributions(m, sites, method, lambda m: m(tokens)[..., 3].sum())
                       for method in ("weight_magnitude", "grad_x_weight")})
    # float64 on both classes, rounded to float32 once: one float32 ulp apart at most
    for method, expected in scores[0].items():
        assert all(v.abs().sum() > 0 for v in expected.values()), method
        torch.testing.assert_close(scores[1][method], expected, rtol=3e-7, atol=1e-12)


# -- every public entry point takes either class, and refuses anything else ----------------


def test_anything_else_is_refused_naming_both_classes(tokens):
    for call in (lambda: attach_masks(nn.Linear(3, 3)),
                 lambda: discover(nn.Linear(3, 3), None, None, None),
                 lambda: weight_site(nn.Linear(3, 3), 0, "W_Q")):
        with pytest.raises(TypeError, match="HookedTransformer.*TransformerBridge"):
            call()
    sub = random_subnetwork(build("bridge"))
    with pytest.raises(TypeError, match="HookedTransformer.*TransformerBridge"):
        evaluate(nn.Linear(3, 3), sub, None, None, tokens)


def test_zoo_model_class_is_checked():
    with pytest.raises(ValueError, match=r"model_class must be one of \('hooked', 'bridge'\)"):
        zoo.load("tiny-world", model_class="bridged")


# -- the built-in model, discover + evaluate, on either class -------------------------


@pytest.fixture(scope="module")
def builtin_pair():
    from kcs_tl.zoo.task import forgetting_task

    zb = zoo.load("tiny-world", model_class="bridge")
    return zb, forgetting_task(zb, 0, n_control=60, n_blocks=12)


def test_builtin_model_as_a_bridge_discovers_and_evaluates(builtin_pair):
    zb, task = builtin_pair
    cfg = DiscoveryConfig(steps=6, kg_batch_size=16, lm_batch_size=2, lm_block_len=32, eval_every=3,
                          progress=False, seed=0)
    found = discover(zb.model, task.target, task.control, task.lm, cfg)
    ev = evaluate(zb.model, found.subnetwork, task.target, task.control, task.lm[:4], n_random=1)
    assert 0 < found.subnetwork.sparsity() < 1
    assert ev.value("target", "original", "top1") > 0.5
    if HAS_HOOKED:  # the same search on the same weights through HookedTransformer finds the same subnetwork
        zh = zoo.load("tiny-world")
        found_h = discover(zh.model, task.target, task.control, task.lm, cfg)
        # float32 here (the shipped weights): the classes' gradients differ in their last bits, and Adam
        # can flip a mask whose score sits at the threshold, so 1% of masks may differ; tables within
        # 1e-3 relative (perplexities move ~1e-6; a top-k fraction only on a logit tie within ~1e-6)
        assert found_h.subnetwork.jaccard(found.subnetwork) > 0.99
        ev_h = evaluate(zh.model, found.subnetwork, task.target, task.control, task.lm[:4], n_random=1)
        diff = (ev.table.set_index(["set", "model", "metric"]).value
                - ev_h.table.set_index(["set", "model", "metric"]).value).abs()
        rel = diff / ev_h.table.set_index(["set", "model", "metric"]).value.abs().clip(lower=1)
        assert rel.max() < 1e-3, rel.sort_values().tail()


@needs_hooked
@pytest.mark.parametrize("granularity", ["head", "neuron", "mlp_pos"])
def test_patching_and_attribution_give_the_same_effects_on_both_classes(toy, granularity):
    from kcs_tl.analysis import attribute, knowledge_prompts, patch

    model, target, control, _ = toy
    model = model.to(torch.float64)  # both classes in float64 (see build()); the effects are rounded to float32
    bridge = wrap(gpt2({k: getattr(model.cfg, k) for k in CFG}, model.state_dict()).double(), model.tokenizer).eval()
    prompts = {m: knowledge_prompts(m, target, pool=control) for m in (model, bridge)}
    for method in (patch, attribute):
        expected, got = (method(m, prompts[m], granularity).table.effect for m in (model, bridge))
        # float64 effects that agree to ~1e-14, each rounded to float32 once: one ulp apart at most
        torch.testing.assert_close(got, expected, rtol=2.4e-7, atol=1e-9)
