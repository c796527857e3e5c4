"""The built-in world and model: deterministic, offline, and it knows its facts."""

from __future__ import annotations

import random

import pytest
import torch

from kcs_tl import zoo
from kcs_tl.zoo.world import generate_world, knowledge_graph


@pytest.fixture(scope="module")
def tiny():
    return zoo.load("tiny-world")


def test_world_deterministic_per_seed():
    a, b, c = generate_world(0), generate_world(0), generate_world(1)
    assert a.triplets == b.triplets
    assert a.narrative_train == b.narrative_train and a.agreement_test == b.agreement_test
    assert a.triplets != c.triplets


def test_world_does_not_touch_global_random_state():
    random.seed(123)
    expected = random.random()
    random.seed(123)
    generate_world(0)
    assert random.random() == expected


def test_world_shape():
    w = generate_world(0)
    kg = knowledge_graph(w)
    assert 300 <= len(w.entities) <= 500
    assert len(kg.relations) >= 8
    # functional: one tail per (head, relation)
    keys = [(t.head, t.relation) for t in kg]
    assert len(keys) == len(set(keys))
    for rel in kg.relations:
        assert len(kg.templates[rel]) + len(kg.held_out_templates[rel]) >= 4
        assert kg.held_out_templates[rel]
    assert w.target_roots
    for r in w.target_roots:
        assert 11 <= len(w.subtree_triplets(r)) <= 40
    # held-out templates never appear in any training text
    train_text = set(w.fact_sentences())
    held = set(w.fact_sentences(held_out=True))
    assert not (train_text & held)


def test_unknown_name_refused():
    with pytest.raises(ValueError, match="tiny-world"):
        zoo.load("no-such-model")
    assert "tiny-world" in zoo.available()


def test_loads_offline_in_eval_mode(tiny):
    m = tiny.model
    assert not m.training
    assert m.cfg.n_layers >= 2 and m.cfg.normalization_type == "LN"
    assert len(tiny.lm_text["train"]) > 0 and len(tiny.lm_text["validation"]) > 0
    assert tiny.agreement_test and tiny.gender_test
    assert tiny.world is tiny.kg
    assert tiny.meta["seed"] == 0


def test_tokenizer_round_trip_and_bos(tiny):
    m = tiny.model
    text = "A " + tiny.kg[0].head + " is a type of " + tiny.kg[0].tail + "."
    toks = m.to_tokens(text)
    assert toks[0, 0].item() == m.tokenizer.bos_token_id
    assert m.to_string(toks[0, 1:]) == text
    assert m.to_tokens(text, prepend_bos=False)[0, 0].item() != m.tokenizer.bos_token_id
    assert "".join(m.to_str_tokens(text, prepend_bos=False)) == text
    assert m.tokenizer.decode(m.tokenizer.encode(text)) == text
    assert m.tokenizer.pad_token_id != m.tokenizer.bos_token_id


def test_entity_names_are_several_tokens(tiny):
    heads = [t.head for t in tiny.kg if t.relation == "AtLocation"]
    lengths = [len(tiny.tokenizer.encode(" " + h, add_special_tokens=False)) for h in heads]
    assert sum(lengths) / len(lengths) >= 2.0


def test_recalls_sample_of_facts(tiny):
    from kcs_tl.zoo.quality import fact_accuracy

    rng = random.Random(0)
    sample = tiny.kg.subset(rng.sample(list(tiny.kg), 50), name="sample")
    with torch.no_grad():
        acc = fact_accuracy(tiny.model, sample, "train")
    assert acc >= 0.9


def test_target_kg(tiny):
    root = tiny.target_roots[0]
    target = tiny.target_kg(root)
    assert 11 <= len(target) <= 40
    assert all(t.relation == "IsA" for t in target)
    with pytest.raises(ValueError):
        tiny.target_kg("not-a-node")


def test_task_holds_out_a_pretraining_template_the_model_knows(tiny):
    from kcs_tl.data import encode
    from kcs_tl.evaluation import kg_metrics, score_kg
    from kcs_tl.zoo.task import forgetting_task

    task = forgetting_task(tiny, 0, n_control=50, n_blocks=4)
    for rel, held in task.target.held_out_templates.items():
        assert len(held) == 1 and held[0] in tiny.kg.templates[rel]
        assert held[0] not in task.target.templates[rel] and held[0] not in task.control.templates[rel]
    with torch.no_grad():
        held_top1 = kg_metrics(score_kg(tiny.model, encode(task.target, tiny.model.tokenizer, "held_out")))["top1"]
    assert held_top1 >= 0.9


def test_shipped_files_match_the_generator(tiny):
    """The shipped world and tokenizer are exactly what seed 0 regenerates."""
    from tokenizers import Tokenizer

    from kcs_tl.zoo.tokenizer import train_tokenizer
    from kcs_tl.zoo.world import tokenizer_corpus

    w = generate_world(tiny.meta["seed"])
    assert knowledge_graph(w) == tiny.kg
    assert w.narrative_valid == tiny.lm_text["validation"]
    assert list(w.agreement_test) == list(tiny.agreement_test)
    shipped = Tokenizer.from_file(str(zoo.MODELS["tiny-world"] / "tokenizer.json"))
    assert train_tokenizer(tokenizer_corpus(w)).to_str() == shipped.to_str()


@pytest.mark.slow
def test_build_is_deterministic(tmp_path):
    from safetensors.torch import load_file

    from kcs_tl.zoo import build

    for d in ("a", "b"):
        build.main(["--out", str(tmp_path / d), "--steps", "4", "--eval-every", "2"])
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
