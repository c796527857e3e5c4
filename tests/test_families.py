"""Every architecture family TransformerLens 3.9 builds from a config, masked the same way.

A tiny random model of each family (offline, from ``HookedTransformerConfig``) goes
through: attach (every maskable matrix), detach bit-identity, gradients to every
score, a few search steps, and Subnetwork statistics / save-load / apply. The last
test prints the family x check matrix (``pytest tests/test_families.py -s``).
"""

import copy
import warnings

import pandas as pd
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from kcs_tl import DiscoveryConfig, Subnetwork, architecture, attach_masks, discover
from kcs_tl.discovery import Search
from kcs_tl.discovery.prepare import count_known_facts, prepare
from kcs_tl.discovery.teacher import plan_teacher

from conftest import toy_world

BASE = dict(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_mlp=64, seed=0)
FAMILIES = {
    "gpt2": dict(act_fn="gelu", normalization_type="LN"),
    "neox": dict(act_fn="gelu", normalization_type="LN", parallel_attn_mlp=True, positional_embedding_type="rotary",
                 rotary_dim=4, default_prepend_bos=False),
    "llama": dict(act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=8,
                  gated_mlp=True, n_key_value_heads=2, final_rms=True, default_prepend_bos=False),
    "gemma2": dict(act_fn="gelu_pytorch_tanh", normalization_type="RMS", positional_embedding_type="rotary",
                   gated_mlp=True, n_key_value_heads=1, use_local_attn=True, attn_types=["local", "global"],
                   window_size=4, attn_scores_soft_cap=50.0, output_logits_soft_cap=30.0,
                   use_normalization_before_and_after=True, final_rms=True),
}
STORED = {  # what is masked in each family, by stored name
    "gpt2": {"W_Q", "W_K", "W_V", "W_O", "W_in", "W_out"},
    "neox": {"W_Q", "W_K", "W_V", "W_O", "W_in", "W_out"},
    "llama": {"W_Q", "_W_K", "_W_V", "W_O", "W_in", "W_out", "W_gate"},
    "gemma2": {"W_Q", "_W_K", "_W_V", "W_O", "W_in", "W_out", "W_gate"},
}
QUICK = dict(steps=4, eval_every=2, kg_batch_size=16, lm_batch_size=4, progress=False, early_stop=False)
CHECKS = ("attach", "detach bit-identical", "gradients", "search steps", "stats, save-load, apply")
MATRIX: dict[str, dict[str, str]] = {f: {} for f in FAMILIES}


def family_world(family: str, dtype: torch.dtype = torch.float32):
    """(model, target, control, blocks): the toy world on a tiny random model of ``family``."""
    _, target, control, blocks = toy_world()
    tokenizer = _.tokenizer
    model = HookedTransformer(HookedTransformerConfig(**BASE, **FAMILIES[family], d_vocab=len(tokenizer),
                                                      dtype=dtype), tokenizer=tokenizer)
    return model.eval(), target, control, blocks


@pytest.fixture(scope="module", params=list(FAMILIES))
def world(request):
    return request.param, family_world(request.param)


@pytest.fixture
def tokens():
    return torch.randint(0, 50, (3, 10), generator=torch.Generator().manual_seed(1))


def passed(family: str, check: str) -> None:
    assert check in CHECKS, check
    MATRIX[family][check] = "ok"


def test_attach_masks_every_matrix_as_stored(world):
    family, (model, *_) = world
    arch = architecture(model)
    masked = attach_masks(model)  # weights=None: every matrix of this architecture, upper half of the layers
    try:
        assert {s.name for s in masked.sites.values()} == STORED[family]
        for s in masked.sites.values():
            stored = getattr(model.blocks[s.layer], s.module).parametrizations[s.name].original
            assert tuple(stored.shape) == s.full_shape == s.shape
        assert set(arch.weights) == {n.lstrip("_") for n in STORED[family]}
    finally:
        masked.detach()
    passed(family, "attach")


def test_detach_is_bit_identical(world, tokens):
    family, (model, *_) = world
    params = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    reference = model(tokens)
    masked = attach_masks(model, layers=[0, 1], hooks=("attn.hook_z", "mlp.hook_post"))
    masked.eval()
    with torch.no_grad():
        for p in masked.scores.values():
            p.fill_(-1e4)  # nothing in the subnetwork: the remaining model is the whole model
    assert torch.equal(masked(tokens), reference)
    with torch.no_grad():
        for p in masked.scores.values():
            p.normal_()
    assert not torch.equal(masked(tokens), reference)
    with masked.disabled():  # the teacher computed on the fly: bit-identical to the original
        assert torch.equal(masked(tokens), reference)
    masked.detach()
    assert dict(model.named_parameters()).keys() == params.keys()
    assert all(p is params[n] and torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert torch.equal(model(tokens), reference)
    passed(family, "detach bit-identical")


def test_gradients_reach_every_score(world, tokens):
    family, (model, *_) = world
    masked = attach_masks(model, layers=[0, 1], hooks=("attn.hook_z", "mlp.hook_post"), init_prob=0.5)
    try:
        masked.train()
        (masked(tokens).logsumexp(-1).mean() + masked.expected_density()).backward()
        for name, p in masked.scores.items():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        masked.check_frozen()
    finally:
        masked.detach()
    passed(family, "gradients")


def test_a_few_search_steps(world):
    family, (model, target, control, blocks) = world
    with pytest.warns(UserWarning, match="knows only"):  # a random model knows no facts
        found = discover(model, target, control, blocks, DiscoveryConfig(**QUICK))
    assert len(found.history) == 4 and torch.isfinite(torch.tensor(found.history["loss"].to_numpy())).all()
    assert found.setup["prepend_bos"] is model.cfg.default_prepend_bos
    assert found.subnetwork.settings["prepend_bos"] is model.cfg.default_prepend_bos
    assert {s.name for s in found.subnetwork.sites.values()} == STORED[family]
    assert not any(p.requires_grad is False for p in model.parameters())  # detached, flags back
    passed(family, "search steps")


def test_subnetwork_stats_save_load_and_apply(world, tokens, tmp_path):
    family, (model, *_) = world
    masked = attach_masks(model, layers=[1], hooks=("attn.hook_z",))
    with torch.no_grad():
        for p in masked.scores.values():
            p.normal_(generator=torch.Generator().manual_seed(0))
    sub = masked.to_subnetwork()
    masked.detach()
    heads, neurons = sub.stats("head"), sub.stats("neuron")
    grouped = model.cfg.n_key_value_heads
    if grouped:
        kv = heads[heads.unit == "kv_head"]
        assert set(kv.matrix) == {"_W_K", "_W_V"} and kv["head"].max() == grouped - 1
        assert (kv.total == model.cfg.d_model * model.cfg.d_head).all()
    assert (set(neurons.matrix) == {"W_in", "W_out", "W_gate"}) == model.cfg.gated_mlp
    assert neurons.groupby("neuron").size().eq(3 if model.cfg.gated_mlp else 2).all()  # W_gate counts with its neuron
    loaded = Subnetwork.load(sub.save(tmp_path / "sub"), model=model)
    assert loaded.sites == sub.sites and all(torch.equal(loaded.masks[a], sub.masks[a]) for a in sub.masks)
    assert loaded.sparsity() == sub.sparsity()
    # apply() folds head masks into the weights, the context gates hook_z: the same function summed in
    # another order, so both run on a float64 copy, where they agree to ~1e-15
    model = copy.deepcopy(model).to(torch.float64)
    with loaded.removed(model):
        expected = model(tokens)
    edited = loaded.apply(copy.deepcopy(model))
    torch.testing.assert_close(edited(tokens), expected, rtol=0, atol=1e-10)
    passed(family, "stats, save-load, apply")


# -- what cannot be masked, and settings refused before any forward pass ----------------------------


def test_mixture_of_experts_is_refused_with_a_clear_error():
    moe = HookedTransformer(HookedTransformerConfig(**BASE, d_vocab=50, act_fn="silu", normalization_type="RMS",
                                                    gated_mlp=True, num_experts=4, experts_per_token=2))
    with pytest.raises(ValueError, match=r"mixture-of-experts models \(num_experts=4\) are not supported"):
        attach_masks(moe)
    with pytest.raises(ValueError, match="mixture-of-experts"):
        architecture(moe)


def _no_forward(*args, **kwargs):
    raise AssertionError("a configuration error must surface before any forward pass")


@pytest.mark.parametrize("settings, message", [
    ({"weights": ("W_gate",)}, r"DiscoveryConfig.weights: GPT-2 style model has no \['W_gate'\] .*its maskable "
                               r"matrices are \('W_Q', 'W_K', 'W_V', 'W_O', 'W_in', 'W_out'\)"),
    ({"layers": (5,)}, r"DiscoveryConfig.layers \[5\] out of range: this model has layers 0..1"),
    ({"teacher": "full", "teacher_max_gib": 1e-6}, r"teacher='full': caching .* would take .* GiB > "
                                                       r"teacher_max_gib=1e-06; use teacher='auto'"),
    ({"teacher": "fp16", "teacher_max_gib": 1e-6}, r"teacher='fp16'"),
    ({"prepend_bos": "yes"}, r"DiscoveryConfig.prepend_bos must be True or False"),
])
def test_configuration_errors_come_before_any_forward_pass(settings, message, monkeypatch):
    model, target, control, blocks = family_world("gpt2")
    monkeypatch.setattr(HookedTransformer, "forward", _no_forward)
    with pytest.raises((TypeError, ValueError), match=message):
        Search(model, target, control, blocks, DiscoveryConfig(**QUICK | settings))


# -- the teacher's representation -----------------------------------------------------------------


def test_the_auto_rule_on_a_135m_model_with_a_49k_vocabulary():
    """SmolLM2-135M-sized inputs: 1,000 ControlKG tail positions, 200 LM blocks of 512 tokens."""
    plan = plan_teacher("auto", 1_000, 200 * 512, 49_152, 100, 2.0)
    assert plan.estimates["full"] == pytest.approx(18.94, abs=0.01)  # what the old default refused
    assert plan.estimates["fp16"] == pytest.approx(9.47, abs=0.01)
    assert (plan.control, plan.lm) == ("top_k", "top_k") and plan.gib == pytest.approx(0.116, abs=0.001)
    huge = plan_teacher("auto", 1_000, 20_000 * 512, 49_152, 100, 2.0)  # 10M LM positions: nothing fits
    assert (huge.control, huge.lm) == ("full", "on_the_fly")
    small = plan_teacher("auto", 100, 1_000, 50, 100, 2.0)
    assert (small.control, small.lm) == ("full", "full")
    mixed = plan_teacher("auto", 10, 1_000, 1_000, 100, 30e3 / 2**30)  # ControlKG fits in fp16, LM in nothing
    assert mixed.describe().startswith("control_kg fp16, control_lm on_the_fly")


@pytest.mark.parametrize("kind", ["fp16", "top_k", "on_the_fly"])
def test_every_teacher_representation_gives_the_full_search(kind):
    """Same seed, same steps: losses match the full fp32 cache (exactly on the fly, closely in fp16/top-k)."""
    model, target, control, blocks = family_world("llama")
    cfg = DiscoveryConfig(**QUICK | {"steps": 3, "eval_every": 3})
    with pytest.warns(UserWarning):
        full = discover(model, target, control, blocks, cfg)
        other = discover(model, target, control, blocks, DiscoveryConfig(**QUICK | {
            "steps": 3, "eval_every": 3, "teacher": kind, "teacher_top_k": 40}))
    assert full.setup["teacher"].startswith("full") and other.setup["teacher"].startswith(kind)
    tol = {"fp16": 1e-3, "top_k": 2e-2, "on_the_fly": 1e-5}[kind]
    for term in ("control_kg", "control_lm"):
        torch.testing.assert_close(torch.tensor(other.history[term].to_numpy()),
                                   torch.tensor(full.history[term].to_numpy()), atol=tol, rtol=tol)


def test_auto_computes_lm_outputs_on_the_fly_when_nothing_fits():
    model, target, control, blocks = family_world("neox")
    with pytest.warns(UserWarning):
        found = discover(model, target, control, blocks, DiscoveryConfig(**QUICK | {"teacher_max_gib": 1e-5}))
    assert "control_lm on_the_fly" in found.setup["teacher"]


# -- BOS and the known-facts warning -----------------------------------------------------------------


@pytest.mark.parametrize("family, prepend_bos, expected", [
    ("llama", None, False), ("llama", True, True), ("gpt2", None, True), ("gpt2", False, False)])
def test_bos_follows_the_model_unless_set(family, prepend_bos, expected):
    model, target, control, blocks = family_world(family)
    cfg = DiscoveryConfig(**QUICK | {"prepend_bos": prepend_bos, "progress": False})
    with warnings.catch_warnings():  # whether a random model "knows" the facts is beside the point here
        warnings.simplefilter("ignore")
        data = prepare(model, target, control, [" ".join(["the story went"] * 40)] * 4, cfg,
                       torch.device("cpu"))
    bos = model.tokenizer.bos_token_id
    assert bool((data.target.tokens[:, 0] == bos).all()) is expected
    assert bool((data.lm[:, 0] == bos).all()) is expected
    assert data.setup["prepend_bos"] is expected


def test_known_facts_are_counted_on_the_best_template(builtin):
    z, task = builtin
    from kcs_tl.data import encode

    known, n = count_known_facts(z.model, encode(task.target, z.tokenizer))
    assert n == len(task.target) and known >= 0.9 * n  # the built-in model knows its world: no warning


def test_print_family_matrix():
    """The family x check matrix of this run: a check one family passed, every family passed.

    Each cell is written by the test that checks it, so a hole is a check that failed, or was
    skipped, for one family while another passed it. Alone (nothing ran before it) it fails.
    """
    table = pd.DataFrame(MATRIX, index=list(CHECKS)).T.fillna("-")
    print("\n" + table.to_string())
    ran = [f for f in FAMILIES if MATRIX[f]]
    assert ran, "no family check ran before this test; run it with tests/test_families.py"
    passed_by_one = {c for f in ran for c in MATRIX[f]}
    holes = [(f, c) for f in ran for c in CHECKS if c in passed_by_one and c not in MATRIX[f]]
    assert not holes, f"checks some families passed and these did not: {holes}"


def test_lm_blocks_backpropagated_in_chunks_give_the_same_step():
    """A tight ``lm_chunk_max_gib`` runs one LM block per backward: the same steps, summed in another order.

    Chunking changes nothing but the order in which the LM term's gradient is summed (four
    backward passes accumulating into ``.grad`` instead of one that reduces over the batch). In
    float32 that order is visible: Adam divides each update by the gradient's running magnitude,
    so where a gradient is near zero a last-bit difference grows to 5e-5 in three steps (seen on
    an AMD EPYC). So everything here is float64 (model, mask scores, losses): unit roundoff
    1.1e-16, so even a cancellation of 1e6 in a sum, amplified by Adam, stays far below the 1e-9
    allowed, while a real difference (a block dropped, counted twice or weighted differently)
    moves the gradients by percents.
    """
    model, target, control, blocks = family_world("llama", dtype=torch.float64)
    runs = {}
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the mask scores and the Lagrangian are made in the default dtype
    try:
        for budget in (1.0, 1e-9):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                search_ = Search(model, target, control, blocks, DiscoveryConfig(**QUICK | {"lm_chunk_max_gib": budget}))
            torch.manual_seed(0)  # the masks' noise comes from the global generator (discover seeds it)
            with search_:
                params = dict(search_.masked.scores.items())
                assert all(p.dtype == torch.float64 for p in params.values())
                history, grads = [], []
                for _ in range(3):
                    history.append({k: float(v.detach()) for k, v in search_.step().items()})
                    grads.append({k: p.grad.clone() for k, p in params.items()})
                runs[budget] = (history, grads, {k: p.detach().clone() for k, p in params.items()},
                                search_.data.setup["lm_blocks_per_backward"])
    finally:
        torch.set_default_dtype(default)
    (h_one, g_one, s_one, n_one), (h_chunked, g_chunked, s_chunked, n_chunked) = runs[1.0], runs[1e-9]
    assert (n_one, n_chunked) == (4, 1)
    for a, b in zip(h_one, h_chunked):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-12) for k in a)
    for a, b in zip(g_one, g_chunked):
        for k in a:
            assert a[k].abs().max() > 0  # the gradient reached these scores, so the comparison means something
            torch.testing.assert_close(b[k], a[k], rtol=1e-9, atol=1e-12)
    for k in s_one:
        torch.testing.assert_close(s_chunked[k], s_one[k], rtol=1e-9, atol=1e-12)
