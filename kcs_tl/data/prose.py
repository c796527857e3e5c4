"""Real English prose for the language-modelling control, offline.

The default source is Python's own documentation as shipped with every
CPython (``pydoc_data.topics``: the language reference's topics, about
460,000 characters under the PSF licence, which allows redistribution and
use): its explanatory paragraphs, with code samples, grammar blocks and
headings left out. Nothing is vendored; the text is read from the installed
module. Any text file (one document per non-empty line) or list of strings
can be given instead.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from kcs_tl import validate
from kcs_tl.files import read_text
from kcs_tl.validate import InputTypeError, InputValueError

_SENTENCE_END = (".", "?", "!", ":", ")", '"')


def _paragraphs(text: str) -> list[str]:
    """Blocks of text separated by blank lines, each joined into one line."""
    return [" ".join(line.strip() for line in block.splitlines())
            for block in re.split(r"\n\s*\n", text) if block.strip()]


def _is_prose(paragraph: str, min_words: int) -> bool:
    words = paragraph.split()
    letters = sum(c.isalpha() or c.isspace() for c in paragraph) / len(paragraph)
    return (len(words) >= min_words and paragraph.endswith(_SENTENCE_END) and letters > 0.85
            and not paragraph.startswith((">>>", "...", "*")) and "::=" not in paragraph)


def python_docs(min_words: int = 15) -> list[str]:
    """The prose paragraphs of ``pydoc_data.topics`` (Python's language reference), one string each."""
    from pydoc_data.topics import topics

    return [p for name in sorted(topics) for p in _paragraphs(topics[name]) if _is_prose(p, min_words)]


def load_prose(source: str | os.PathLike | Sequence[str] | None = None, min_words: int = 15) -> list[str]:
    """Documents of real English text: ``None`` for Python's documentation (``python_docs``),
    a path to a text file (one document per non-empty line), or a list of strings."""
    min_words = validate.integer("min_words", min_words, 1)
    if source is None:
        return python_docs(min_words)
    if isinstance(source, (str, os.PathLike)):
        if not Path(source).is_file():
            raise InputValueError(f"source={str(source)!r} is not a file; give a text file (one document per line), "
                                  "a list of strings, or None for Python's documentation")
        text = read_text(source, "text, one document per line")
        return [line.strip() for line in text.splitlines() if line.strip()]
    if isinstance(source, Sequence) and all(isinstance(s, str) for s in source):
        docs = [s for s in source if s.strip()]
        if docs:
            return docs
        raise InputValueError("source is a list with no non-empty string")
    raise InputTypeError(f"source must be None, a text file path or a list of strings, got {validate.given(source)}")
