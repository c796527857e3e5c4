"""Fixed-length token blocks from a text corpus, for the language-modelling control (ControlLM).

Documents are tokenised, joined with EOS between them (GPT-2's convention)
and chopped into blocks of ``block_len``; the incomplete last block is dropped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from kcs_tl.data.splits import holdout
from kcs_tl.files import read_text
from kcs_tl.validate import InputTypeError, InputValueError


def _documents(texts: Sequence[str] | str | os.PathLike) -> list[str]:
    if isinstance(texts, (str, os.PathLike)):
        try:
            is_file = Path(texts).is_file()
        except (OSError, ValueError):  # a name too long for a path, or holding a NUL byte
            is_file = False
        if not is_file:
            shown = str(texts) if len(str(texts)) <= 60 else str(texts)[:57] + "..."
            hint = (" (a str is read as a file path; to pass text itself, give a list of strings, one per document)"
                    if isinstance(texts, str) else "")
            raise InputValueError(f"texts={shown!r} is not a file{hint}")
        text = read_text(texts, "text, one document per line")
        return [line.strip() for line in text.splitlines() if line.strip()]
    if not isinstance(texts, Sequence) or not all(isinstance(t, str) for t in texts):
        raise InputTypeError("texts must be a list of strings or a path to a text file "
                             "(one document per non-empty line)")
    return [t for t in texts if t.strip()]


def _token_stream(documents: list[str], tokenizer: Any, eos: int, chunk: int = 1000) -> Iterator[int]:
    for lo in range(0, len(documents), chunk):
        for ids in tokenizer(documents[lo : lo + chunk], add_special_tokens=False)["input_ids"]:
            yield from ids
            yield eos


def lm_blocks(
    texts: Sequence[str] | str | os.PathLike,
    tokenizer: Any,
    block_len: int,
    max_blocks: int | None = None,
    prepend_bos: bool = False,
) -> Int[Tensor, "n_blocks block_len"]:
    """Token blocks of ``block_len`` from ``texts`` (a list of documents, or a text file path).

    A file holds one document per non-empty line (as WikiText does).
    ``max_blocks`` stops tokenising once that many blocks are full. With
    ``prepend_bos`` each block is BOS followed by ``block_len - 1`` corpus tokens.
    """
    if not isinstance(block_len, int) or block_len < 2:
        raise InputValueError(f"block_len must be an int >= 2, got {block_len!r}")
    if max_blocks is not None and (not isinstance(max_blocks, int) or max_blocks < 1):
        raise InputValueError(f"max_blocks must be None or an int >= 1, got {max_blocks!r}")
    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id if prepend_bos else None
    if eos is None or (prepend_bos and bos is None):
        raise InputValueError(f"the tokenizer needs an eos token{' and a bos token' if prepend_bos else ''}")
    documents = _documents(texts)
    body = block_len - (1 if prepend_bos else 0)
    blocks: list[list[int]] = []
    current: list[int] = []
    for token in _token_stream(documents, tokenizer, eos):
        current.append(token)
        if len(current) == body:
            blocks.append(([bos] if prepend_bos else []) + current)
            current = []
            if len(blocks) == max_blocks:
                break
    if not blocks:
        raise InputValueError(f"the corpus ({len(documents)} documents, {len(current)} tokens with separators) "
                              f"is shorter than one block of {block_len} tokens")
    return torch.tensor(blocks, dtype=torch.long)


def model_lm_blocks(texts: Sequence[str] | str | os.PathLike, model: Any, block_len: int,
                    prepend_bos: bool | None) -> Int[Tensor, "n_blocks block_len"]:
    """``lm_blocks`` for ``model``, by the one rule every caller shares (the CLI, sweeps, ``discover``).

    Blocks are ``min(block_len, model.cfg.n_ctx)`` tokens of ``model.tokenizer``; they start
    with BOS when ``prepend_bos`` says so (``None``: ``model.cfg.default_prepend_bos``, as
    ``DiscoveryConfig.bos`` decides).
    """
    if model.tokenizer is None:
        raise InputValueError("text needs tokenising but the model has no tokenizer; pass one to "
                              "HookedTransformer(cfg, tokenizer=...) or give token blocks")
    bos = model.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
    return lm_blocks(texts, model.tokenizer, min(block_len, model.cfg.n_ctx), prepend_bos=bos)


def split_blocks(
    blocks: Int[Tensor, "n_blocks block_len"], val_fraction: float = 0.1, seed: int = 0
) -> tuple[Int[Tensor, "n_train block_len"], Int[Tensor, "n_val block_len"]]:
    """Shuffle blocks with ``seed`` and split off ``val_fraction`` of them (at least one) for validation."""
    if blocks.ndim != 2 or len(blocks) < 2:
        raise InputValueError(f"need a [n_blocks, block_len] tensor with n_blocks >= 2, "
                              f"got shape {tuple(blocks.shape)}")
    train, val = holdout(len(blocks), val_fraction, seed)
    return blocks[train], blocks[val]
