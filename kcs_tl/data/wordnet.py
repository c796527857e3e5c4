"""WordNet 3.0 hypernym knowledge graphs shipped with the package (the TargetKGs of Bayazit et al.).

Built by ``python -m kcs_tl.data.build_wordnet`` (see ``wordnet/README.md``);
WordNet's licence is in ``wordnet/LICENSE``.
"""

from __future__ import annotations

from pathlib import Path

from kcs_tl.data.kg import KnowledgeGraph
from kcs_tl.validate import InputValueError

DATA_DIR = Path(__file__).parent / "wordnet"

WORDNET_ROOTS: tuple[str, ...] = (
    "building.n.01",
    "change.n.01",
    "communication.n.02",
    "location.n.01",
    "magnitude.n.01",
    "representation.n.02",
    "statement.n.01",
)
"""Synsets whose hyponym subtrees are the TargetKGs of the paper."""

ISA_TEMPLATES: list[str] = [
    "The {head} is a type of {tail}",
    "The {head} is a kind of {tail}",
    "The {head} is a sort of {tail}",
    "The {head} is a form of {tail}",
    "The {head} is a specific kind of {tail}",
]
"""Paraphrases of the IsA relation; the build holds one out (``split_templates``, seed 0)."""


def load_wordnet(root: str) -> KnowledgeGraph:
    """The TargetKG rooted at ``root`` (one of ``WORDNET_ROOTS``), e.g. ``"location.n.01"``."""
    if root not in WORDNET_ROOTS:
        raise InputValueError(f"unknown WordNet root {root!r}; valid roots: {', '.join(WORDNET_ROOTS)}")
    return KnowledgeGraph.load(DATA_DIR / f"{root}.jsonl")


def load_wordnet_control() -> KnowledgeGraph:
    """A ControlKG of WordNet IsA facts sharing no triplet and no entity with any TargetKG."""
    return KnowledgeGraph.load(DATA_DIR / "control.jsonl")
