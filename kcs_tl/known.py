"""Keep only the facts a model knows: suppressing facts it never knew would measure nothing.

As Bayazit et al. select their data per model: each relation's best training
template is the one with the lowest tail perplexity (``best_templates``), and
a triplet is *known* when its gold tail's first token is within the model's
top ``k`` after that template's prefix.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import pandas as pd

from kcs_tl import validate
from kcs_tl.data.kg import KnowledgeGraph
from kcs_tl.data.verbalise import best_templates, encode
from kcs_tl.validate import InputTypeError, InputValueError


@dataclass
class KnownFacts:
    """The facts ``model`` knows (``kg``, trained on the best template only) and every fact's score.

    ``table``: one row per triplet of the input graph: head, relation, tail,
    template, rank of the gold tail's first token (0 = top-1), its log-prob,
    and ``known`` (rank < k).
    """

    kg: KnowledgeGraph | None
    table: pd.DataFrame
    k: int
    prepend_bos: bool

    def summary(self) -> pd.DataFrame:
        """Per relation: facts, known (top-k) and top-1 counts."""
        t = self.table.assign(top1=self.table["rank"] == 0)
        out = t.groupby("relation", sort=False).agg(facts=("tail", "size"), known=("known", "sum"),
                                                    top1=("top1", "sum"))
        out.loc["all"] = out.sum()
        return out

    def __repr__(self) -> str:
        top1 = int((self.table["rank"] == 0).sum())
        return (f"KnownFacts({int(self.table.known.sum())} of {len(self.table)} facts in the top {self.k}, "
                f"{top1} top-1; prepend_bos={self.prepend_bos})")

    def _repr_html_(self) -> str:
        return f"<p><code>{html.escape(repr(self))}</code></p>" + self.summary().to_html()


def known_facts(model, kg: KnowledgeGraph, k: int = 10, prepend_bos: bool | None = None,
                batch_size: int = 64) -> KnownFacts:
    """The facts of ``kg`` whose gold tail ``model`` ranks in its top ``k`` under the relation's best template.

    ``prepend_bos`` defaults to the model's own convention (``model.cfg.default_prepend_bos``).
    The returned graph keeps the best template as its only training template
    (and ``kg``'s held-out templates); it is ``None`` when no fact survives.
    """
    if not isinstance(kg, KnowledgeGraph):
        raise InputTypeError(f"kg must be a KnowledgeGraph, got {validate.given(kg)}")
    k = validate.integer("k", k, 1)
    batch_size = validate.integer("batch_size", batch_size, 1)
    if model.tokenizer is None:
        raise InputValueError("known_facts needs a model with a tokenizer")
    bos = model.cfg.default_prepend_bos if prepend_bos is None else validate.boolean("prepend_bos", prepend_bos)
    from kcs_tl.evaluation import score_kg  # metrics imports data: import here, not at module level

    best = best_templates(model, kg, prepend_bos=bos, batch_size=batch_size)
    scores = score_kg(model, encode(kg, model.tokenizer, best, prepend_bos=bos), batch_size)
    table = kg.to_frame().assign(template=[best[t.relation] for t in kg], rank=scores.rank.numpy(),
                                 logp=scores.logp.numpy())
    table["known"] = table["rank"] < k
    kept = [t for t, keep in zip(kg, table.known) if keep]
    known = (KnowledgeGraph(kept, {r: [best[r]] for r in best}, kg.held_out_templates, kg.name)
             if kept else None)
    return KnownFacts(known, table, k, bos)
