"""Names and paths into things: models, knowledge graphs and run folders.

The one place where what a user wrote (``--model gpt2``, ``zoo:ROOT``, a sweep's
model spec) becomes an object, shared by the ``kcs-tl`` command and the sweeps so
both accept the same forms. LM blocks from text are ``kcs_tl.data.lm.model_lm_blocks``
(where ``discover`` can use them too).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from kcs_tl.adapters import check_model, is_pretrained_name, load_pretrained, pretrained_names, wrap
from kcs_tl.analysis.report import Report, report
from kcs_tl.data import KnowledgeGraph, load_wordnet, load_wordnet_control
from kcs_tl.files import result_folder
from kcs_tl.validate import InputValueError

MODEL_FORMS = ("a built-in model {zoo}, a TransformerLens model name with local weights, package.module:function "
               "(a function returning a model) or a folder holding a saved Hugging Face model")


def _bad_model(spec: str, problem: str) -> InputValueError:
    from kcs_tl import zoo

    return InputValueError(f"--model {spec!r} {problem}: give {MODEL_FORMS.format(zoo=zoo.available())}; "
                      "`kcs-tl discover --list-models` lists them")


def _reason(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def load_model(spec: str):
    """The model a spec names (see ``model_and_world``)."""
    return model_and_world(spec)[0]


def model_and_world(spec: str):
    """``(model, ZooModel or None)``: a built-in zoo model with its world, a folder holding a saved Hugging
    Face model, ``package.module:function`` (called with no arguments) or a TransformerLens model name."""
    from kcs_tl import zoo

    if spec in zoo.available():
        z = zoo.load(spec)
        return z.model, z
    if Path(spec).is_dir():
        return _from_folder(spec), None
    if ":" in spec:
        return _from_function(spec), None
    return _from_transformer_lens(spec), None


def _from_folder(spec: str):
    """A causal LM saved with ``save_pretrained`` (and its tokenizer, if saved), wrapped as a
    ``TransformerBridge``; never downloads."""
    folder = Path(spec)
    if not (folder / "config.json").is_file():
        raise _bad_model(spec, "is a folder without a saved Hugging Face model (no config.json)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        hf_model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
        tokenizer = (AutoTokenizer.from_pretrained(folder, local_files_only=True)
                     if (folder / "tokenizer_config.json").is_file() else None)
        model = wrap(hf_model, tokenizer, model_name=folder.resolve().name)
    except (OSError, ValueError) as err:  # a broken folder, an architecture TransformerLens cannot wrap
        raise InputValueError(f"--model {spec!r}: could not load the saved Hugging Face model "
                              f"({_reason(err)})") from err
    check_model(model)
    return model


def _from_function(spec: str):
    module_name, _, function = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError, ValueError) as err:
        raise _bad_model(spec, f"cannot be imported ({err})") from None
    if not callable(fn):
        raise _bad_model(spec, f"names a {type(fn).__name__}, not a function")
    model = fn()
    check_model(model)
    return model


def _from_transformer_lens(name: str):
    """TransformerLens's own loader (``adapters.load_pretrained``); needs local weights."""
    if not is_pretrained_name(name):
        raise _bad_model(name, "is unknown")
    try:
        return load_pretrained(name)
    except (OSError, ValueError) as err:  # offline, missing weights: say what was tried
        raise InputValueError(f"--model {name!r}: could not load its weights ({_reason(err)}); they must be "
                              "available locally (e.g. in the Hugging Face cache)") from err


def model_names() -> str:
    """What ``--model`` accepts, as ``--list-models`` prints it."""
    from kcs_tl import zoo

    lines = ["built-in (offline):", *(f"  {name}" for name in zoo.available())]
    names = pretrained_names()
    if names is None:  # TransformerLens 4.x
        lines.append("or a Hugging Face model name TransformerBridge.boot_transformers supports (weights local)")
    else:
        lines += ["TransformerLens (weights must be available locally):", *(f"  {n}" for n in names)]
    lines.append("or package.module:function (a function returning a model), or a folder holding a saved "
                 "Hugging Face model")
    return "\n".join(lines)


def load_kg(spec: str) -> KnowledgeGraph:
    """``wordnet:ROOT``, ``wordnet:control``, ``zoo:ROOT`` (a built-in IsA subtree) or a .jsonl path."""
    kind, _, rest = spec.partition(":")
    if kind == "wordnet":
        return load_wordnet_control() if rest == "control" else load_wordnet(rest)
    if kind == "zoo":
        from kcs_tl import zoo

        return zoo.load().target_kg(rest)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"{spec!r} is neither a file nor wordnet:ROOT, wordnet:control or zoo:ROOT")
    return KnowledgeGraph.load(path)


def write_run(out: Path, overwrite: bool, found, evaluation=None, files: dict | None = None,
              report_of: dict | None = None) -> Report | None:
    """A run's folder, written atomically (``kcs_tl.files.result_folder``).

    Always the subnetwork and ``history.csv``; with ``evaluation``, ``evaluation.csv``;
    ``files`` maps file names to text or to a ``KnowledgeGraph`` (saved as .jsonl);
    ``report_of`` (the model, target, control and title ``kcs_tl.report`` takes) adds
    ``report.html``.
    """
    with result_folder(out, overwrite) as tmp:
        found.subnetwork.save(tmp / "subnetwork")
        found.history.to_csv(tmp / "history.csv", index=False)
        if evaluation is not None:
            evaluation.table.to_csv(tmp / "evaluation.csv", index=False)
        for name, content in (files or {}).items():
            if isinstance(content, KnowledgeGraph):
                content.save(tmp / name)
            else:
                (tmp / name).write_text(content)
        done = None
        if report_of is not None:
            done = report(subnetwork=found.subnetwork, path=tmp / "report.html", evaluation=evaluation, **report_of)
    if done is not None:
        done.path = Path(out) / "report.html"  # where the folder now is
    return done
