"""The built-in model as a TransformerBridge: its weights in an equivalent Hugging Face GPT-2.

The shipped weights are in TransformerLens's canonical layout (what
``HookedTransformer`` stores). This rearranges them into
``transformers.GPT2LMHeadModel`` (fused ``c_attn``, ``Conv1D`` ``[in, out]``,
an untied unembedding with a bias) and wraps that in a ``TransformerBridge``,
so TransformerLens 4.x users get the same model, output for output.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kcs_tl.validate import InputValueError


def hf_state(cfg: dict, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """TransformerLens-layout weights of a GPT-2-style model -> ``GPT2LMHeadModel`` state dict."""
    out = {"transformer.wte.weight": state["embed.W_E"], "transformer.wpe.weight": state["pos_embed.W_pos"],
           "transformer.ln_f.weight": state["ln_final.w"], "transformer.ln_f.bias": state["ln_final.b"],
           "lm_head.weight": state["unembed.W_U"].T, "lm_head.bias": state["unembed.b_U"]}
    for i in range(cfg["n_layers"]):
        s, h = f"blocks.{i}.", f"transformer.h.{i}."

        def heads_in(name: str) -> Tensor:  # [n_heads, d_model, d_head] -> [d_model, n_heads * d_head]
            return state[s + name].permute(1, 0, 2).flatten(1)

        out |= {
            h + "ln_1.weight": state[s + "ln1.w"], h + "ln_1.bias": state[s + "ln1.b"],
            h + "ln_2.weight": state[s + "ln2.w"], h + "ln_2.bias": state[s + "ln2.b"],
            h + "attn.c_attn.weight": torch.cat([heads_in("attn.W_Q"), heads_in("attn.W_K"), heads_in("attn.W_V")], 1),
            h + "attn.c_attn.bias": torch.cat([state[s + f"attn.b_{x}"].flatten() for x in "QKV"]),
            h + "attn.c_proj.weight": state[s + "attn.W_O"].flatten(0, 1), h + "attn.c_proj.bias": state[s + "attn.b_O"],
            h + "mlp.c_fc.weight": state[s + "mlp.W_in"], h + "mlp.c_fc.bias": state[s + "mlp.b_in"],
            h + "mlp.c_proj.weight": state[s + "mlp.W_out"], h + "mlp.c_proj.bias": state[s + "mlp.b_out"],
        }
    return {k: v.contiguous() for k, v in out.items()}


def gpt2(cfg: dict, state: dict[str, Tensor]) -> nn.Module:
    """An equivalent ``GPT2LMHeadModel`` holding the built-in model's weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if cfg.get("normalization_type") != "LN" or cfg.get("positional_embedding_type") != "standard":
        raise InputValueError(f"only GPT-2-style built-in models convert to Hugging Face GPT-2, got {cfg}")
    config = GPT2Config(
        vocab_size=cfg["d_vocab"], n_positions=cfg["n_ctx"], n_embd=cfg["d_model"], n_layer=cfg["n_layers"],
        n_head=cfg["n_heads"], n_inner=cfg["d_mlp"], activation_function=cfg["act_fn"],
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
        tie_word_embeddings=False, architectures=["GPT2LMHeadModel"],
    )
    if cfg["d_model"] != cfg["n_heads"] * cfg["d_head"]:
        raise InputValueError("Hugging Face GPT-2 needs d_model == n_heads * d_head")
    model = GPT2LMHeadModel(config)
    model.lm_head = nn.Linear(cfg["d_model"], cfg["d_vocab"], bias=True)  # TransformerLens keeps b_U
    missing, unexpected = model.load_state_dict(hf_state(cfg, state), strict=False)
    if unexpected or [k for k in missing if not k.endswith(".attn.bias") and not k.endswith("masked_bias")]:
        raise RuntimeError(f"weights do not fit GPT2LMHeadModel: missing {missing}, unexpected {unexpected}")
    return model.eval()


def as_bridge(cfg: dict, state: dict[str, Tensor], tokenizer):
    """The built-in model as a ``TransformerBridge`` (TransformerLens 3.9 and 4.x)."""
    from kcs_tl.adapters import wrap

    return wrap(gpt2(cfg, state), tokenizer, model_name=cfg.get("model_name", "custom"))
