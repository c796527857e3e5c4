"""Byte-level BPE tokenizer for the built-in world (GPT-2-like).

Trained with the ``tokenizers`` library; leading-space tokens (" red"),
``<|endoftext|>`` as bos/eos and ``<|pad|>`` as pad.  Wrapped as a
``transformers.PreTrainedTokenizerFast`` so ``HookedTransformer.to_tokens`` /
``to_string`` / ``to_str_tokens`` work.

``add_bos_token=True`` is set on the wrapper on purpose: TransformerLens'
``set_tokenizer`` otherwise re-loads the tokenizer with
``AutoTokenizer.from_pretrained(name_or_path, add_bos_token=True)``, which
would try to reach a model hub.  The tokenizer itself has no post-processor,
so it never adds the bos; TransformerLens prepends it (``prepend_bos``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

BOS = "<|endoftext|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = [BOS, PAD]

__all__ = ["BOS", "PAD", "train_tokenizer", "wrap", "load_tokenizer"]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE on ``texts`` (deterministic for the same input)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return tok


def wrap(tok: Tokenizer, bos: str = BOS, eos: str = BOS, pad: str = PAD, unk: str | None = None,
         name: str = "kcs_tl/tiny-world"):
    """Wrap a ``tokenizers.Tokenizer`` for TransformerLens / transformers (special tokens as given)."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token=unk,
        add_bos_token=True,
        model_max_length=10**6,
    )
    # The wrapper's "add_bos_token" only silences TransformerLens' reload;
    # make sure the underlying tokenizer does not add anything itself.
    fast._tokenizer.post_processor = None
    # TransformerLens reads init_kwargs["name_or_path"] unconditionally.
    fast.init_kwargs.setdefault("name_or_path", name)
    fast.init_kwargs["add_bos_token"] = True
    return fast


def load_tokenizer(path: str | Path):
    """Load ``tokenizer.json`` (offline) and wrap it."""
    return wrap(Tokenizer.from_file(str(path)))
