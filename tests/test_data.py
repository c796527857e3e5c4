"""Data layer: knowledge graphs, splits, verbalisation into batches, LM blocks."""

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import PreTrainedTokenizerFast

from kcs_tl.data import (
    IGNORE_INDEX,
    KnowledgeGraph,
    Triplet,
    best_templates,
    check_disjoint,
    check_template,
    encode,
    lm_blocks,
    split_blocks,
    split_templates,
    subtree,
    target_control_split,
)

CORPUS = [
    "A space is a type of location",
    "A dog is a kind of animal",
    "A cat is a type of animal and a pet",
    "The house is a kind of building",
    "Paris is the capital of France",
] * 5

TEMPLATES = {"IsA": ["A {head} is a type of {tail}", "A {head} is a kind of {tail}"],
             "CapitalOf": ["{head} is the capital of {tail}"]}


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """A tiny byte-level BPE, GPT-2 style (space prefix on words), trained on CORPUS.

    ``add_bos_token`` and ``name_or_path`` keep TransformerLens' ``set_tokenizer``
    from re-loading it from a hub; no post-processor, so it never adds BOS itself.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<|endoftext|>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                 eos_token="<|endoftext|>", pad_token="<pad>", add_bos_token=True)
    hf._tokenizer.post_processor = None
    hf.init_kwargs.update(name_or_path="toy", add_bos_token=True)
    return hf


@pytest.fixture
def graph() -> KnowledgeGraph:
    return KnowledgeGraph(
        [Triplet("space", "IsA", "location"), Triplet("dog", "IsA", "animal"),
         Triplet("puppy", "IsA", "dog"), Triplet("cat", "IsA", "animal"),
         Triplet("Paris", "CapitalOf", "France")],
        TEMPLATES, {"IsA": ["Every {head} is a {tail}"]}, name="toy",
    )


# -- KnowledgeGraph ------------------------------------------------------------

def test_graph_views(graph):
    assert len(graph) == 5 and graph[0] == Triplet("space", "IsA", "location")
    assert graph.relations == ("IsA", "CapitalOf")
    assert graph.heads == ("space", "dog", "puppy", "cat", "Paris")
    assert list(graph.to_frame().columns) == ["head", "relation", "tail"]
    assert "toy" in repr(graph) and "<table" in graph._repr_html_()
    assert graph.filter(lambda t: t.tail == "animal").heads == ("dog", "cat")


@pytest.mark.parametrize("bad, needle", [
    ("A {head} is a type of", "{tail}"),
    ("{tail} is what a {head} is", "{tail}"),
    ("A {head} is a type of {tail}.", "{tail}"),
    ("A {head} is a {tail}, a {tail}", "{tail}"),
    ("A thing is a type of {tail}", "{head}"),
    ("A {head} is a {kind} of {tail}", "kind"),
    ("A {head!r} is a type of {tail}", "format spec"),
])
def test_bad_template_refused_naming_it(bad, needle):
    with pytest.raises(ValueError, match="IsA") as err:
        KnowledgeGraph([Triplet("a", "IsA", "b")], {"IsA": [bad]})
    assert repr(bad) in str(err.value) and needle in str(err.value)
    with pytest.raises(ValueError):
        check_template(bad)


def test_bad_graphs_refused():
    with pytest.raises(ValueError, match="no triplets"):
        KnowledgeGraph([], TEMPLATES)
    with pytest.raises(ValueError, match="PartOf.*wheel"):
        KnowledgeGraph([Triplet("wheel", "PartOf", "car")], TEMPLATES)
    with pytest.raises(ValueError, match="twice"):
        KnowledgeGraph([Triplet("a", "IsA", "b")] * 2, TEMPLATES)
    with pytest.raises(ValueError, match="also training"):
        KnowledgeGraph([Triplet("a", "IsA", "b")], TEMPLATES, {"IsA": TEMPLATES["IsA"][:1]})
    with pytest.raises(ValueError, match="whitespace"):
        Triplet("a", "IsA", " b")
    with pytest.raises(TypeError, match="Triplet"):
        KnowledgeGraph(["a IsA b"], TEMPLATES)


def test_jsonl_round_trip(graph, tmp_path):
    graph.save(tmp_path / "g.jsonl")
    assert KnowledgeGraph.load(tmp_path / "g.jsonl") == graph
    (tmp_path / "bad.jsonl").write_text('{"type": "graph", "format": "kcs_tl.kg/1"}\n{"type": "fact"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: unknown record type 'fact'"):
        KnowledgeGraph.load(tmp_path / "bad.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"type": "triplet", "head": "a", "relation": "IsA", "tail": "b"}\n')
    with pytest.raises(ValueError, match="start with exactly one 'graph' record"):
        KnowledgeGraph.load(tmp_path / "bad.jsonl")


def test_split_templates_deterministic():
    temps = {"IsA": ["{head} a {tail}", "{head} b {tail}", "{head} c {tail}"]}
    train, held = split_templates(temps, n_held_out=1, seed=3)
    assert (train, held) == split_templates(temps, n_held_out=1, seed=3)
    assert sorted(train["IsA"] + held["IsA"]) == sorted(temps["IsA"]) and len(held["IsA"]) == 1
    with pytest.raises(ValueError, match="IsA"):
        split_templates(temps, n_held_out=3)


# -- splits ----------------------------------------------------------------------

def test_target_control_split_is_disjoint(graph):
    target, control = target_control_split(graph, [Triplet("dog", "IsA", "animal")])
    assert list(target) == [Triplet("dog", "IsA", "animal")]
    assert len(control) == 4 and Triplet("dog", "IsA", "animal") not in control
    check_disjoint(target, control)
    with pytest.raises(ValueError, match="not in"):
        target_control_split(graph, [Triplet("cow", "IsA", "animal")])


def test_overlap_refused_by_triplet_and_by_head(graph):
    target = graph.subset([Triplet("dog", "IsA", "animal")])
    with pytest.raises(ValueError, match=r"also target.*dog"):
        check_disjoint(target, graph)
    same_head = KnowledgeGraph([Triplet("dog", "IsA", "pet")], TEMPLATES)
    check_disjoint(target, same_head)
    with pytest.raises(ValueError, match=r"head entity.*pet"):
        check_disjoint(target, same_head, by_head=True)
    g = KnowledgeGraph(list(graph) + [Triplet("dog", "IsA", "pet")], TEMPLATES)
    _, control = target_control_split(g, target, by_head=True)
    assert "dog" not in control.heads
    _, sampled = target_control_split(g, target, n_control=2, seed=1)
    assert len(sampled) == 2 and sampled == target_control_split(g, target, n_control=2, seed=1)[1]


def test_subtree(graph):
    sub = subtree(graph, "animal")
    assert set(sub) == {Triplet("dog", "IsA", "animal"), Triplet("puppy", "IsA", "dog"),
                        Triplet("cat", "IsA", "animal")}
    with pytest.raises(ValueError, match="valid"):
        subtree(graph, "animal", relation="PartOf")
    with pytest.raises(ValueError, match="'plant'"):
        subtree(graph, "plant")


# -- verbalisation ------------------------------------------------------------------

def test_label_positions_predict_the_tail(graph, tokenizer):
    batch = encode(graph, tokenizer)
    assert len(batch) == 4 * 2 + 1
    assert batch.sentences[0] == "A space is a type of location"
    assert (batch.tokens[:, 0] == tokenizer.bos_token_id).all()
    multi = 0
    for r in range(len(batch)):
        i = int(batch.triplet_index[r])
        tail_ids = tokenizer.encode(" " + graph[i].tail, add_special_tokens=False)
        pos = batch.label_mask[r].nonzero().squeeze(1)
        assert batch.tokens[r, pos + 1].tolist() == tail_ids
        assert batch.labels[r, pos].tolist() == tail_ids
        assert int(batch.first_label_pos[r]) == int(pos[0])
        assert int(pos[-1]) + 2 == int(batch.lengths[r])
        assert (batch.labels[r][~batch.label_mask[r]] == IGNORE_INDEX).all()
        multi += len(tail_ids) > 1
    assert multi > 0, "the toy graph should include a multi-token tail"


def test_padding_and_slicing(graph, tokenizer):
    batch = encode(graph, tokenizer, prepend_bos=False)
    assert batch.tokens[0, 0] != tokenizer.bos_token_id
    short = int(batch.lengths.argmin())
    assert (batch.tokens[short, batch.lengths[short]:] == tokenizer.pad_token_id).all()
    assert not batch.label_mask[short, batch.lengths[short]:].any()
    one = batch[short]
    assert len(one) == 1 and one.tokens.shape[1] == int(batch.lengths[short])
    assert one.sentences == [batch.sentences[short]]
    assert len(batch[1:4]) == 3 and len(batch[torch.tensor([0, 2])]) == 2
    assert batch.to("cpu").tokens.device.type == "cpu"


def test_template_choices(graph, tokenizer):
    with pytest.raises(ValueError, match="CapitalOf"):
        encode(graph, tokenizer, "held_out")
    isa = graph.filter(lambda t: t.relation == "IsA")
    held = encode(isa, tokenizer, "held_out")
    assert held.sentences[0] == "Every space is a location"
    assert len(encode(isa, tokenizer, ["{head} is a {tail}"])) == len(isa)
    assert len(encode(graph, tokenizer, {"IsA": "{head} is a {tail}",
                                         "CapitalOf": "{head} is the capital of {tail}"})) == len(graph)
    with pytest.raises(ValueError, match="ambiguous"):
        encode(graph, tokenizer, ["{head} is a {tail}"])


def test_unknown_tail_refused_naming_triplet():
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "<s>": 1, "A": 2, "dog": 3, "is": 4, "a": 5}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<s>", unk_token="[UNK]")
    g = KnowledgeGraph([Triplet("dog", "IsA", "mammal")], {"IsA": ["A {head} is a {tail}"]})
    with pytest.raises(ValueError, match=r"tail ' mammal'.*dog.*unknown"):
        encode(g, hf)


def test_agrees_with_hooked_transformer_to_tokens(graph, tokenizer):
    cfg = HookedTransformerConfig(n_layers=1, d_model=16, n_ctx=32, d_head=4, n_heads=4,
                                  d_vocab=len(tokenizer), act_fn="gelu", seed=0)
    model = HookedTransformer(cfg, tokenizer=tokenizer)
    batch = encode(graph, tokenizer)
    for r in (0, 3, len(batch) - 1):
        expected = model.to_tokens(batch.sentences[r])[0]
        assert batch.tokens[r, : batch.lengths[r]].tolist() == expected.tolist()
    choice = best_templates(model, graph)
    assert set(choice) == {"IsA", "CapitalOf"} and choice["IsA"] in TEMPLATES["IsA"]


# -- LM blocks -------------------------------------------------------------------------

def test_lm_blocks_and_split(tokenizer, tmp_path):
    blocks = lm_blocks(CORPUS, tokenizer, block_len=8)
    n_tokens = sum(len(tokenizer.encode(t)) + 1 for t in CORPUS)
    assert blocks.shape == (n_tokens // 8, 8) and blocks.dtype == torch.long
    assert (blocks == tokenizer.eos_token_id).any()
    (tmp_path / "corpus.txt").write_text("\n\n".join(CORPUS))
    assert torch.equal(lm_blocks(tmp_path / "corpus.txt", tokenizer, 8), blocks)
    assert len(lm_blocks(CORPUS, tokenizer, 8, max_blocks=3)) == 3
    with_bos = lm_blocks(CORPUS, tokenizer, 8, prepend_bos=True)
    assert (with_bos[:, 0] == tokenizer.bos_token_id).all()
    train, val = split_blocks(blocks, val_fraction=0.25, seed=0)
    again = split_blocks(blocks, val_fraction=0.25, seed=0)
    assert torch.equal(train, again[0]) and torch.equal(val, again[1])
    assert len(val) == round(len(blocks) * 0.25) and len(train) + len(val) == len(blocks)
    assert not torch.equal(split_blocks(blocks, 0.25, seed=1)[1], val)
    with pytest.raises(ValueError, match="shorter than one block"):
        lm_blocks(["tiny"], tokenizer, block_len=512)
    with pytest.raises(ValueError, match="val_fraction"):
        split_blocks(blocks, val_fraction=1.5)
