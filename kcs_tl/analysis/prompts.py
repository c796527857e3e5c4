"""Clean, counterfactual and noised prompts for the facts of a knowledge graph (for patching).

A fact ``(space, IsA, location)`` becomes the clean prompt ``"A space is a type of"``
whose next token should be the tail's first token. Two corruptions:

- ``"swap"``: the subject replaced by another head of the same relation (from the
  graph, or from a larger ``pool``) with the same number of tokens and a different
  tail, so clean and counterfactual prompts align token by token;
- ``"noise"``: Gaussian noise added to the subject's token embeddings (causal
  tracing, Meng et al.), ``noise_scale`` times the standard deviation of the
  embedding matrix (3 by default), drawn once with a seed so every run sees the same.

The counterfactual tail (the partner's) is what the logit difference is taken against,
under either corruption.
"""

from __future__ import annotations

import html
import random
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from kcs_tl import validate
from kcs_tl.adapters import check_model
from kcs_tl.data.kg import KnowledgeGraph, Triplet
from kcs_tl.validate import InputTypeError, InputValueError

CORRUPTIONS = ("swap", "noise")


@dataclass
class KnowledgePrompts:
    """One row per fact that has a counterfactual partner; right-padded token rows."""

    facts: list[Triplet]
    counterfactuals: list[Triplet]
    """Row -> the partner whose subject replaces the fact's in the swapped prompt."""
    clean: Int[Tensor, "batch pos"]
    swapped: Int[Tensor, "batch pos"]
    subject: Bool[Tensor, "batch pos"]
    """True at the subject's tokens (where the noise goes)."""
    answer_pos: Int[Tensor, "batch"]
    """The prompt's last position: its logits predict the tail."""
    gold: Int[Tensor, "batch"]
    """First token of the fact's tail."""
    counter: Int[Tensor, "batch"]
    """First token of the counterfactual's tail."""
    noise: Float[Tensor, "batch pos d_model"]
    """Noise added to the embeddings under the ``"noise"`` corruption (zero outside the subject)."""
    texts: list[str]
    dropped: list[Triplet]
    """Facts left out: no head of the same relation with as many tokens and another tail."""

    def __len__(self) -> int:
        return len(self.facts)

    def to(self, device) -> "KnowledgePrompts":
        moved = {k: v.to(device) for k, v in self.__dict__.items() if isinstance(v, Tensor)}
        return KnowledgePrompts(**(self.__dict__ | moved))

    def corrupted(self, corruption: str) -> tuple[Int[Tensor, "batch pos"], list]:
        """Tokens and forward hooks of the corrupted run: swapped prompts, or clean ones with noised subjects."""
        validate.choice("corruption", corruption, CORRUPTIONS)
        if corruption == "swap":
            return self.swapped, []

        def add_noise(embed, hook):
            return embed + self.noise[: embed.shape[0]].to(embed.dtype)

        return self.clean, [("hook_embed", add_noise)]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"prompt": self.texts, "gold": [f.tail for f in self.facts],
                             "counterfactual_subject": [c.head for c in self.counterfactuals],
                             "counterfactual_tail": [c.tail for c in self.counterfactuals]})

    def __repr__(self) -> str:
        return (f"KnowledgePrompts({len(self)} facts, pos={self.clean.shape[1]}, {len(self.dropped)} dropped "
                f"for want of a same-length partner; e.g. {self.texts[0]!r})")

    def _repr_html_(self) -> str:
        return f"<p><code>{html.escape(repr(self))}</code></p>" + self.to_frame().head(20).to_html(index=False)


def _pieces(template: str, head: str, tail: str) -> tuple[str, str, str, str]:
    """(text before the subject, the subject, text after it up to the tail, the tail), spaces on the right words."""
    before, after = template[: -len("{tail}")].split("{head}", 1)
    lead = " " if before.endswith(" ") else ""
    return before.rstrip(), lead + head, after.rstrip(), " " + tail if after.endswith(" ") else tail


def knowledge_prompts(model, graph: KnowledgeGraph, pool: KnowledgeGraph | list[Triplet] | None = None,
                      noise_scale: float = 3.0, seed: int = 0) -> KnowledgePrompts:
    """Prompts for the facts of ``graph`` with their first training template per relation.

    Counterfactual subjects come from ``pool`` (a graph or triplets; default: ``graph`` itself): heads of
    the same relation whose tokens number the same as the fact's subject and whose
    tail starts with another token. Facts without one are listed in ``dropped``.
    """
    check_model(model)
    if not isinstance(graph, KnowledgeGraph):
        raise InputTypeError(f"graph must be a KnowledgeGraph, got {validate.given(graph)}")
    if pool is not None and not (isinstance(pool, (KnowledgeGraph, list, tuple))
                                 and all(isinstance(t, Triplet) for t in pool)):
        raise InputTypeError(f"pool must be None, a KnowledgeGraph or a list of Triplets, got {validate.given(pool)}")
    noise_scale = validate.number("noise_scale", noise_scale, 0)
    seed = validate.integer("seed", seed, 0)
    tok = model.tokenizer
    if tok is None:
        raise InputValueError("model has no tokenizer; knowledge prompts need model.tokenizer")

    def ids(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False) if text else []

    def first(tail_text: str) -> int:
        return ids(tail_text)[0]

    bos = [tok.bos_token_id] if model.cfg.default_prepend_bos and tok.bos_token_id is not None else []
    pool = graph if pool is None else pool
    rng = random.Random(seed)
    rows, facts, partners, texts, dropped = [], [], [], [], []
    for fact in graph:
        template = graph.templates[fact.relation][0]
        before, subject, after, tail = _pieces(template, fact.head, fact.tail)
        n_subject, gold = len(ids(subject)), first(tail)
        candidates = sorted({t for t in pool if t.relation == fact.relation and t.head != fact.head
                             and len(ids(_pieces(template, t.head, t.tail)[1])) == n_subject
                             and first(_pieces(template, t.head, t.tail)[3]) != gold},
                            key=lambda t: (t.head, t.tail))
        if not candidates:
            dropped.append(fact)
            continue
        partner = rng.choice(candidates)
        head = bos + ids(before)
        rows.append((head, ids(subject), ids(_pieces(template, partner.head, partner.tail)[1]), ids(after),
                     gold, first(_pieces(template, partner.head, partner.tail)[3])))
        facts.append(fact)
        partners.append(partner)
        texts.append(f"{before}{subject}{after}")
    if not rows:
        raise InputValueError(f"no fact of {graph!r} has a counterfactual partner (a head of the same relation with "
                              "as many tokens and another tail); pass a larger pool= graph")
    width = max(len(a) + len(s) + len(b) for a, s, _, b, _, _ in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    clean = torch.full((len(rows), width), pad, dtype=torch.long)
    swapped, subject = clean.clone(), torch.zeros(len(rows), width, dtype=torch.bool)
    answer = torch.zeros(len(rows), dtype=torch.long)
    for r, (a, s, s2, b, _, _) in enumerate(rows):
        n = len(a) + len(s) + len(b)
        clean[r, :n] = torch.tensor(a + s + b)
        swapped[r, :n] = torch.tensor(a + s2 + b)
        subject[r, len(a): len(a) + len(s)] = True
        answer[r] = n - 1
    validate.tokens("knowledge prompts", clean, model)
    gen = torch.Generator().manual_seed(seed)
    std = float(model.W_E.detach().float().std())
    noise = torch.randn(len(rows), width, model.cfg.d_model, generator=gen) * noise_scale * std
    return KnowledgePrompts(facts, partners, clean, swapped, subject, answer,
                            torch.tensor([g for *_, g, _ in rows]), torch.tensor([c for *_, c in rows]),
                            noise * subject[..., None], texts, dropped)
