"""kcs_tl.loading: every model form (zoo name, import path, saved Hugging Face folder), clear errors, LM blocks."""

import pytest
import torch

from kcs_tl.adapters import adapter
from kcs_tl.cli import main
from kcs_tl.data.lm import model_lm_blocks
from kcs_tl.loading import load_kg, load_model, model_and_world

from conftest import toy_tokenizer, toy_world

FORMS = "package.module:function (a function returning a model) or a folder holding a saved Hugging Face model"


def toy_model():
    """A loader for ``test_loading:toy_model``."""
    return toy_world()[0]


def not_a_model():
    return "gpt2"


@pytest.fixture
def saved_gpt2(tmp_path):
    """A tiny random GPT-2 saved with ``save_pretrained`` (and the toy tokenizer), and the model itself."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = toy_tokenizer()
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=16, n_embd=32, n_layer=2, n_head=4,
                                    bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)).eval()
    folder = tmp_path / "my-gpt2"
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, hf


def test_a_zoo_name_brings_its_world():
    model, world = model_and_world("tiny-world")
    assert world is not None and world.model is model


def test_an_import_path_calls_the_function():
    model, world = model_and_world("test_loading:toy_model")
    assert world is None and model.cfg.n_layers == 2 and model.tokenizer is not None


def test_a_saved_hugging_face_folder_loads_offline(saved_gpt2):
    folder, hf = saved_gpt2
    model = load_model(str(folder))
    adapter(model)  # a TransformerLens model kcs_tl supports
    tokens = torch.tensor([[0, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).log_softmax(-1), hf(tokens).logits.log_softmax(-1))
    blocks = model_lm_blocks(["the story went and thing1 is red"] * 20, model, 512, None)
    assert blocks.shape[1] == 16 and bool((blocks[:, 0] == model.tokenizer.bos_token_id).all())


def test_a_saved_folder_without_a_tokenizer_needs_token_blocks(saved_gpt2):
    folder, _ = saved_gpt2
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink(missing_ok=True)
    model = load_model(str(folder))
    assert model.tokenizer is None
    with pytest.raises(ValueError, match="the model has no tokenizer"):
        model_lm_blocks(["some text"], model, 8, None)


@pytest.mark.filterwarnings("ignore:discover. the model knows only:UserWarning")
def test_discover_runs_on_a_saved_folder(saved_gpt2, tmp_path, capsys):
    folder, _ = saved_gpt2
    _, target, control, _ = toy_world()
    target.save(tmp_path / "target.jsonl")
    control.save(tmp_path / "control.jsonl")
    (tmp_path / "lm.txt").write_text("the story went and thing1 is red\n" * 50)
    main(["discover", "--model", str(folder), "--target", str(tmp_path / "target.jsonl"), "--control",
          str(tmp_path / "control.jsonl"), "--lm", str(tmp_path / "lm.txt"), "--steps", "2", "--no-report",
          "--out", str(tmp_path / "run")])
    assert (tmp_path / "run" / "evaluation.csv").is_file() and "criteria:" in capsys.readouterr().out


@pytest.mark.parametrize("spec, problem", [
    ("gpt-17", "is unknown"),
    ("no_such_module:load", "cannot be imported"),
    ("test_loading:missing", "cannot be imported"),
    ("test_loading:FORMS", "names a str, not a function"),
])
def test_a_bad_model_spec_names_the_valid_forms(spec, problem):
    with pytest.raises(ValueError) as info:
        load_model(spec)
    assert str(info.value).startswith(f"--model {spec!r} {problem}") and FORMS in str(info.value)


def test_a_folder_without_a_saved_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"is a folder without a saved Hugging Face model \(no config.json\)"):
        load_model(str(tmp_path))


def test_a_loader_must_return_a_transformer_lens_model():
    with pytest.raises(TypeError, match="kcs_tl needs a TransformerLens model, got str"):
        load_model("test_loading:not_a_model")


def test_a_bad_kg_spec_names_the_valid_forms():
    with pytest.raises(FileNotFoundError, match="neither a file nor wordnet:ROOT, wordnet:control or zoo:ROOT"):
        load_kg("nowhere.jsonl")


@pytest.mark.parametrize("prepend_bos", [None, True, False])
def test_lm_blocks_follow_one_rule(prepend_bos):
    model = toy_world()[0]  # n_ctx 16, BOS by default
    blocks = model_lm_blocks(["the story went and thing1 is red"] * 40, model, 512, prepend_bos)
    assert blocks.shape[1] == model.cfg.n_ctx
    starts_with_bos = bool((blocks[:, 0] == model.tokenizer.bos_token_id).all())
    assert starts_with_bos == (model.cfg.default_prepend_bos if prepend_bos is None else prepend_bos)
    assert model_lm_blocks(["the story went and thing1 is red"] * 40, model, 8, prepend_bos).shape[1] == 8
