"""Relation templates: sentences with a ``{head}`` slot that END with ``{tail}``.

A template such as ``"A {head} is a type of {tail}"`` turns a triplet into a
sentence whose last words are the tail, so the model's prediction of the tail
can be read off the positions just before it. This module checks templates,
splits a filled template into (prefix, tail) and holds paraphrases out.
"""

from __future__ import annotations

import random
import string
from collections.abc import Mapping, Sequence

from kcs_tl.validate import InputTypeError, InputValueError

_TAIL = "{tail}"


def check_template(template: str, relation: str = "") -> None:
    """Raise ``ValueError`` unless ``template`` has ``{head}`` and ends with its only ``{tail}``."""
    where = f"template {template!r}" + (f" of relation {relation!r}" if relation else "")
    if not isinstance(template, str):
        raise InputTypeError(f"{where}: a template must be a str, got {type(template).__name__}")
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as err:
        raise InputValueError(f"{where} is not a valid format string: {err}") from None
    fields = [(name, spec, conv) for _, name, spec, conv in parts if name is not None]
    bad = sorted({name for name, _, _ in fields if name not in ("head", "tail")})
    if bad:
        raise InputValueError(f"{where} has unknown slot(s) {bad}; the valid slots are {{head}} and {{tail}}")
    if any(spec or conv for _, spec, conv in fields):
        raise InputValueError(f"{where}: slots take no format spec or conversion (write {{head}}, {{tail}})")
    names = [name for name, _, _ in fields]
    if "head" not in names:
        raise InputValueError(f"{where} has no {{head}} slot")
    if names.count("tail") != 1 or not template.endswith(_TAIL):
        raise InputValueError(
            f"{where} must contain {{tail}} exactly once, as its very end "
            f"(e.g. 'A {{head}} is a type of {{tail}}')"
        )


def check_templates(templates: Mapping[str, Sequence[str]], what: str = "templates") -> dict[str, list[str]]:
    """Check a relation -> templates mapping and return it as a plain ``dict`` of lists."""
    if not isinstance(templates, Mapping):
        raise InputTypeError(f"{what} must be a dict relation -> list of templates, got {type(templates).__name__}")
    out: dict[str, list[str]] = {}
    for relation, temps in templates.items():
        if isinstance(temps, str) or not isinstance(temps, Sequence):
            raise InputTypeError(f"{what}[{relation!r}] must be a list of template strings, got {temps!r}")
        if not temps:
            raise InputValueError(f"{what}[{relation!r}] is empty; give at least one template")
        if len(set(temps)) != len(temps):
            raise InputValueError(f"{what}[{relation!r}] lists a template twice: {list(temps)!r}")
        for template in temps:
            check_template(template, relation)
        out[relation] = list(temps)
    return out


def fill(template: str, head: str, tail: str) -> tuple[str, str]:
    """Fill a template and split it into ``(prefix, tail_text)``.

    Whitespace between the prefix and the tail moves onto the tail
    (``"A space is a type of"``, ``" location"``), which is how BPE tokenizers
    such as GPT-2's see a word in running text.
    """
    prefix = template[: -len(_TAIL)].format(head=head)
    stripped = prefix.rstrip()
    return stripped, prefix[len(stripped):] + tail


def split_templates(
    templates: Mapping[str, Sequence[str]], n_held_out: int = 1, seed: int = 0
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Split each relation's templates into (train, held_out), deterministically.

    Held-out paraphrases are never used in training, so suppression can be
    tested on phrasings the search never saw. Order within each part follows
    the input order; the choice depends only on ``seed``, the relation and
    its templates.
    """
    templates = check_templates(templates)
    if not isinstance(n_held_out, int) or n_held_out < 0:
        raise InputValueError(f"n_held_out must be an int >= 0, got {n_held_out!r}")
    train: dict[str, list[str]] = {}
    held_out: dict[str, list[str]] = {}
    for relation, temps in templates.items():
        if len(temps) <= n_held_out:
            raise InputValueError(
                f"relation {relation!r} has {len(temps)} template(s), need more than "
                f"n_held_out={n_held_out} so at least one is left for training"
            )
        chosen = set(random.Random(f"{seed}:{relation}").sample(range(len(temps)), n_held_out))
        train[relation] = [t for i, t in enumerate(temps) if i not in chosen]
        if chosen:
            held_out[relation] = [t for i, t in enumerate(temps) if i in chosen]
    return train, held_out
