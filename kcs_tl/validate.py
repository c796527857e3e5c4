"""Small validators shared by every entry point: one place that says what a valid value is.

Each checks one argument and returns it normalised (an ``int`` for an integral
number, a ``tuple`` for a list of names). A bad value raises ``InputTypeError``
(wrong kind, a ``TypeError``) or ``InputValueError`` (right kind, wrong value, a
``ValueError``) with one line that names the argument, shows what was given and
says what is valid::

    DiscoveryConfig.lr must be a finite number in (0, 10], got inf (float)

``DiscoveryConfig``, masks, data, evaluation and the command line all call
these instead of checking on their own, and every check elsewhere in kcs_tl
raises the same two types: an ``InputError`` is a bad input, anything else a
bug (the command line prints the first as one line, the second with its
traceback).
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Iterable, Mapping, Sequence

import torch
from jaxtyping import Int
from torch import Tensor

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


class InputError(Exception):
    """A bad input (argument, setting, file, data); the message names it and says what is valid."""


class InputValueError(InputError, ValueError):
    """A bad input of the right kind but a wrong value."""


class InputTypeError(InputError, TypeError):
    """A bad input of the wrong kind."""


def given(value) -> str:
    """How a bad value is shown in a message: its repr (shortened) and its type."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _interval(low, high, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return ""


def _outside(x, low, high, low_open: bool, high_open: bool) -> bool:
    return ((low is not None and (x < low or (low_open and x == low)))
            or (high is not None and (x > high or (high_open and x == high))))


def integer(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """An ``int`` (not a bool, not a float such as 1.7) within ``[low, high]``."""
    valid = f"an int {_interval(low, high, False, False)}".rstrip()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputTypeError(f"{name} must be {valid}, got {given(value)}")
    if _outside(value, low, high, False, False):
        raise InputValueError(f"{name} must be {valid}, got {value}")
    return int(value)


def number(name: str, value, low: float | None = None, high: float | None = None, *,
           low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number (an int is fine, a bool or a string is not) within the bounds."""
    valid = f"a finite number {_interval(low, high, low_open, high_open)}".rstrip()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputTypeError(f"{name} must be {valid}, got {given(value)}")
    if not math.isfinite(value) or _outside(value, low, high, low_open, high_open):
        raise InputValueError(f"{name} must be {valid}, got {value!r}")
    return float(value)


def fraction(name: str, value) -> float:
    """A number strictly between 0 and 1 (a share held out, a probability)."""
    return number(name, value, 0, 1, low_open=True, high_open=True)


def boolean(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise InputTypeError(f"{name} must be True or False, got {given(value)}")
    return value


def choice(name: str, value, options: Sequence[str]) -> str:
    """One of ``options``."""
    if not isinstance(value, str) or value not in options:
        raise InputValueError(f"{name} must be one of {tuple(options)}, got {given(value)}")
    return value


def _collection(value) -> bool:
    """A list, tuple, range, set...: iterable, but not a string or a mapping."""
    return isinstance(value, Iterable) and not isinstance(value, (str, bytes, Mapping, Tensor))


def names(name: str, value, options: Sequence[str]) -> tuple[str, ...]:
    """A list or tuple of names from ``options`` (a bare string would be read letter by letter)."""
    if isinstance(value, str):
        raise InputTypeError(f"{name} must be a tuple of names from {tuple(options)}, got the string "
                             f"{value!r}; write ({value!r},)")
    if not _collection(value):
        raise InputTypeError(f"{name} must be a tuple of names from {tuple(options)}, got {given(value)}")
    value = tuple(value)
    bad = [v for v in value if not isinstance(v, str) or v not in options]
    if bad:
        raise InputValueError(f"{name} holds unknown name(s) {bad}; valid: {tuple(options)}")
    return value


def layers(name: str, value) -> tuple[int, ...]:
    """A non-empty list or tuple of layer indices (ints >= 0; 1.7 is not a layer)."""
    if not _collection(value):
        raise InputTypeError(f"{name} must be None or a tuple of layer indices (ints >= 0), got {given(value)}")
    value = tuple(value)
    if not value:
        raise InputValueError(f"{name} is empty; give at least one layer index, or None for the upper half")
    return tuple(integer(f"{name}[{i}]", v, 0) for i, v in enumerate(value))


def optional(check, name: str, value, *args, **kwargs):
    """``None``, or a value that passes ``check``."""
    return None if value is None else check(name, value, *args, **kwargs)


def path(name: str, value) -> str:
    """A file or folder path, as a string."""
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise InputTypeError(f"{name} must be a path (str or pathlib.Path), got {given(value)}")
    return str(value)


def device(name: str, value) -> str:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``."""
    if isinstance(value, torch.device):
        value = str(value)
    if not isinstance(value, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", value):
        raise InputValueError(f"{name} must be one of {DEVICES}, got {given(value)}")
    return value


def tokens(name: str, value, model, rows: Sequence[str] | None = None,
           lengths: Tensor | None = None) -> Int[Tensor, "batch pos"]:
    """Token ids ``[batch, pos]`` that ``model`` can read: integers in its vocabulary, within its context.

    ``rows`` (the text of each row) and ``lengths`` (real tokens per row) let the
    message name the sentence that is too long.
    """
    if not isinstance(value, Tensor):
        raise InputTypeError(f"{name} must be a tensor of token ids [batch, pos], got {given(value)}")
    if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
        raise InputTypeError(f"{name} must hold integer token ids (torch.long), got dtype {value.dtype}; "
                             "tokenise text with model.to_tokens or kcs_tl.lm_blocks")
    if value.ndim != 2 or value.numel() == 0:
        raise InputValueError(f"{name} must be a non-empty [batch, pos] tensor of token ids, "
                              f"got shape {tuple(value.shape)}")
    low, high, vocab = int(value.min()), int(value.max()), model.cfg.d_vocab
    if low < 0 or high >= vocab:
        raise InputValueError(f"{name} holds token id {low if low < 0 else high}; valid ids are 0..{vocab - 1} "
                              "(the model's vocabulary): is it the model's own tokenizer?")
    width = value.shape[1] if lengths is None else int(lengths.max())
    if width > model.cfg.n_ctx:
        row = int(lengths.argmax()) if lengths is not None else None
        which = f" (e.g. {rows[row]!r})" if rows is not None and row is not None else ""
        raise InputValueError(f"{name} has rows of {width} tokens{which} but the model reads at most "
                              f"n_ctx={model.cfg.n_ctx}; shorten them or use a model with a longer context")
    return value


def kg_batch(name: str, batch, model):
    """A ``KGBatch`` that ``model`` can read: its tokens (``tokens``) and its tail labels in range."""
    if len(batch) == 0:
        raise InputValueError(f"{name} is empty")
    tokens(name, batch.tokens, model, rows=batch.sentences, lengths=batch.lengths)
    labels = batch.labels[batch.label_mask]
    if labels.numel() == 0:
        raise InputValueError(f"{name} has no tail positions to score (label_mask is all False)")
    if int(labels.min()) < 0 or int(labels.max()) >= model.cfg.d_vocab:
        raise InputValueError(f"{name} holds tail label ids outside 0..{model.cfg.d_vocab - 1}")
    return batch
