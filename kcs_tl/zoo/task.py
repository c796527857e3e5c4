"""The built-in forgetting task: one IsA subtree of the world as TargetKG, the rest as control.

Shared by ``kcs-tl demo``, the tests and the benchmarks so they all measure the same thing.
The search trains on three of the four templates per relation the model was
pretrained on; the fourth (``split_templates``, seed 0) is its held-out
paraphrase. The model knows its facts in that wording, so suppression on it
measures whether forgetting carries over to a phrasing the search never saw.
(The world's own held-out templates were never in any training text, and the
model does not recall IsA facts in them at all; ``kcs_tl.zoo.quality``
reports those.)
"""

from __future__ import annotations

from dataclasses import dataclass

from jaxtyping import Int
from torch import Tensor

from kcs_tl.data import KnowledgeGraph, lm_blocks, split_templates
from kcs_tl.data.splits import target_control_split
from kcs_tl.validate import InputValueError

CONTROL_SIZE = 600  # ControlKG triplets sampled from the rest of the world
LM_BLOCKS = 200  # ControlLM blocks of n_ctx tokens (train + validation)


@dataclass
class Task:
    """What a search needs, plus where it came from."""

    root: str
    target: KnowledgeGraph
    control: KnowledgeGraph
    lm: Int[Tensor, "n_blocks block_len"]


def forgetting_task(zoo_model, root: str | int = 0, seed: int = 0, n_control: int = CONTROL_SIZE,
                    n_blocks: int = LM_BLOCKS) -> Task:
    """The IsA facts under ``root`` (a name, or an index into ``target_roots``) to forget.

    The ControlKG is ``n_control`` other facts of the world (never a target triplet;
    facts about target entities in other relations may appear and must be kept).
    """
    if isinstance(root, int):
        if not 0 <= root < len(zoo_model.target_roots):
            raise InputValueError(f"root index {root} out of range 0..{len(zoo_model.target_roots) - 1}")
        root = zoo_model.target_roots[root]
    kg = search_templates(zoo_model.kg)
    target, control = target_control_split(kg, search_templates(zoo_model.target_kg(root)),
                                           n_control=n_control, seed=seed)
    blocks = lm_blocks(zoo_model.lm_text["train"], zoo_model.tokenizer, zoo_model.model.cfg.n_ctx,
                       max_blocks=n_blocks)
    return Task(root, target, control, blocks)


def search_templates(kg: KnowledgeGraph, seed: int = 0) -> KnowledgeGraph:
    """``kg`` with one pretraining template per relation held out of the search."""
    return kg.with_templates(*split_templates(kg.templates, n_held_out=1, seed=seed))
