"""Built-in pretrained models and their worlds, loadable offline in seconds.

>>> from kcs_tl import zoo
>>> z = zoo.load("tiny-world")            # HookedTransformer + KnowledgeGraph + text
>>> zb = zoo.load("tiny-world", model_class="bridge")   # the same weights as a TransformerBridge
>>> z.model.to_str_tokens("A velmora is a type of")
>>> target = z.target_kg(z.target_roots[0])   # an IsA subtree, 11-40 triplets

Nothing is ever downloaded: the weights (safetensors), tokenizer and world
ship inside the package (``kcs_tl/zoo/tiny_world/``) and are rebuilt
deterministically by ``python -m kcs_tl.zoo.build --seed 0``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kcs_tl.validate import InputValueError
from kcs_tl.zoo.weights import load_weights

__all__ = ["ZooModel", "load", "available", "MODELS", "MODEL_CLASSES"]

_HERE = Path(__file__).resolve().parent
MODELS: dict[str, Path] = {"tiny-world": _HERE / "tiny_world"}
MODEL_CLASSES = ("hooked", "bridge")  # HookedTransformer (TransformerLens 3.x) | TransformerBridge (3.9 and 4.x)
DOWNLOADED = ("smollm2-135m",)
"""Real models whose weights come from an optional package (``kcs_tl.zoo.smollm2``)."""


def available() -> list[str]:
    """Names accepted by :func:`load`."""
    return sorted([*MODELS, *DOWNLOADED])


@dataclass
class ZooModel:
    """A built-in model with everything known about it.

    ``kg`` holds every fact of the world (training and held-out templates);
    ``lm_text`` has ``"train"`` / ``"validation"`` narrative stories (the
    ControlLM text; validation was never trained on); ``agreement_test`` and
    ``gender_test`` are the De Cao et al. probes (prefixes ending right
    before the verb / pronoun); ``target_roots`` are IsA subtree roots whose
    subtree has 11-40 triplets.
    """

    name: str
    model: Any  # transformer_lens HookedTransformer or TransformerBridge (``load(model_class=...)``)
    tokenizer: Any  # transformers.PreTrainedTokenizerFast
    kg: Any  # kcs_tl.data.kg.KnowledgeGraph
    lm_text: dict[str, list[str]]
    agreement_train: list[str] = field(default_factory=list)
    agreement_test: list = field(default_factory=list)
    gender_train: list[str] = field(default_factory=list)
    gender_test: list = field(default_factory=list)
    target_roots: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def world(self):
        """Alias of ``kg``."""
        return self.kg

    def target_kg(self, root: str):
        """The IsA subtree under ``root`` as a KnowledgeGraph named ``root``."""
        from kcs_tl.data.splits import subtree

        return subtree(self.kg, root, "IsA")


def _hooked(cfg: dict, state: dict, tokenizer, device: str):
    """The shipped weights as a HookedTransformer (TransformerLens 3.x only)."""
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError:
        raise ImportError("this TransformerLens has no HookedTransformer (4.x removed it); load the built-in "
                          "model with zoo.load(name, model_class='bridge')") from None
    model = HookedTransformer(HookedTransformerConfig(**cfg, device=device), tokenizer=tokenizer,
                              move_to_device=False)
    load_weights(model, state)
    return model


def _read_lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line]


def load(name: str = "tiny-world", device: str = "cpu", path: str | Path | None = None,
         model_class: str | None = None) -> ZooModel:
    """Load a built-in model offline (``path`` overrides the shipped directory, or the cache for a real model).

    ``"smollm2-135m"`` is SmolLM2-135M-Instruct (``kcs_tl.zoo.smollm2``) with the
    shipped country facts as ``kg`` and Python's documentation as ``lm_text``
    (a ``HookedTransformer``). For the built-in ``tiny-world``,
    ``model_class="hooked"`` gives a ``HookedTransformer`` (TransformerLens 3.x);
    ``"bridge"`` gives a ``TransformerBridge`` around an equivalent Hugging Face
    GPT-2 holding the same weights (TransformerLens 3.9 and 4.x; same outputs).
    ``None`` picks ``"hooked"`` where TransformerLens still has it, else ``"bridge"``.
    """
    from kcs_tl import validate
    from kcs_tl.adapters import HAS_HOOKED

    if model_class is None:
        model_class = "hooked" if HAS_HOOKED else "bridge"
    model_class = validate.choice("model_class", model_class, MODEL_CLASSES)
    if name in DOWNLOADED:
        if model_class != "hooked":
            raise InputValueError(f"zoo model {name!r} loads as a HookedTransformer only (model_class='hooked', "
                                  "TransformerLens 3.x)")
        return _load_smollm2(device, path)
    if path is None:
        if name not in MODELS:
            raise InputValueError(f"unknown zoo model {name!r}; valid names: {available()}")
        root = MODELS[name]
    else:
        root = Path(path)
    if not (root / "model.safetensors").exists():
        raise FileNotFoundError(f"{root} has no model.safetensors; build it with "
                                f"`python -m kcs_tl.zoo.build --out {root}`")

    from safetensors.torch import load_file

    from kcs_tl.data.kg import KnowledgeGraph
    from kcs_tl.zoo.tokenizer import load_tokenizer
    from kcs_tl.zoo.world import AgreementItem, GenderItem

    tokenizer = load_tokenizer(root / "tokenizer.json")
    cfg_dict = json.loads((root / "config.json").read_text())
    state = load_file(str(root / "model.safetensors"), device="cpu")
    if model_class == "bridge":
        from kcs_tl.zoo.bridge import as_bridge

        model = as_bridge(cfg_dict["model"], state, tokenizer)
    else:
        model = _hooked(cfg_dict["model"], state, tokenizer, device)
    if str(device) != "cpu":
        model.to(device)
    model.eval()

    kg = KnowledgeGraph.load(root / "world.jsonl")
    meta = json.loads((root / "world_meta.json").read_text())
    agreement_test = [AgreementItem(**json.loads(l)) for l in _read_lines(root / "agreement_test.jsonl")]
    gender_test = [GenderItem(**json.loads(l)) for l in _read_lines(root / "gender_test.jsonl")]
    return ZooModel(
        name=name,
        model=model,
        tokenizer=model.tokenizer,
        kg=kg,
        lm_text={"train": _read_lines(root / "lm_train.txt"),
                 "validation": _read_lines(root / "lm_valid.txt")},
        agreement_train=_read_lines(root / "agreement_train.txt"),
        agreement_test=agreement_test,
        gender_train=_read_lines(root / "gender_train.txt"),
        gender_test=gender_test,
        target_roots=list(meta["target_roots"]),
        meta={**meta, "build": cfg_dict.get("build", {})},
    )


def _load_smollm2(device: str, folder: str | Path | None) -> ZooModel:
    from kcs_tl.data.countries import load_countries
    from kcs_tl.data.prose import load_prose
    from kcs_tl.data.splits import holdout
    from kcs_tl.zoo import smollm2

    model, tokenizer = smollm2.load_model(device, folder)
    prose = load_prose()
    train, val = holdout(len(prose), 0.1, 0)
    return ZooModel(name="smollm2-135m", model=model, tokenizer=tokenizer, kg=load_countries(),
                    lm_text={"train": [prose[i] for i in train.tolist()],
                             "validation": [prose[i] for i in val.tolist()]},
                    meta={"source": smollm2.GGUF_FILE, "package": smollm2.PACKAGE, "licence": "Apache-2.0",
                          "lm_text": "pydoc_data.topics (Python's documentation, PSF licence)"})
