"""Turn a knowledge graph into token batches, and pick each relation's best template.

Each sentence is tokenised as prefix + tail, separately, and concatenated, so
the tail's tokens are known exactly (``"A space is a type of"`` + ``" location"``);
for BPE tokenizers with a space-prefix convention (GPT-2's) this is what
``model.to_tokens(sentence)`` gives as well.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from kcs_tl.data.batch import IGNORE_INDEX, KGBatch
from kcs_tl.data.kg import KnowledgeGraph, Triplet
from kcs_tl.data.templates import check_templates, fill
from kcs_tl.validate import InputTypeError, InputValueError

TemplateChoice = Literal["train", "held_out"] | Mapping[str, str | Sequence[str]] | Sequence[str]


def resolve_templates(graph: KnowledgeGraph, templates: TemplateChoice) -> dict[str, list[str]]:
    """The templates to use per relation of ``graph``.

    ``"train"`` / ``"held_out"`` take the graph's own; a dict maps relations to
    one template or a list (e.g. the output of ``best_templates``); a plain
    list applies to a graph with a single relation.
    """
    if templates == "train":
        table = graph.templates
    elif templates == "held_out":
        table = graph.held_out_templates
    elif isinstance(templates, Mapping):
        table = check_templates({r: [t] if isinstance(t, str) else t for r, t in templates.items()})
    elif isinstance(templates, Sequence) and not isinstance(templates, str):
        if len(graph.relations) != 1:
            raise InputValueError(f"a plain list of templates is ambiguous for {graph!r}; "
                                  f"pass a dict relation -> templates for {list(graph.relations)}")
        table = check_templates({graph.relations[0]: templates})
    else:
        raise InputValueError(f"templates must be 'train', 'held_out', a dict relation -> template(s) "
                              f"or a list of templates, got {templates!r}")
    missing = [r for r in graph.relations if r not in table]
    if missing:
        raise InputValueError(f"no {templates if isinstance(templates, str) else 'given'} templates for "
                              f"relation(s) {missing} of {graph!r}")
    return table


def _special_id(tokenizer: Any, *names: str) -> int:
    for name in names:
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        if token_id is not None:
            return token_id
    raise InputValueError(f"the tokenizer has no {' or '.join(names)} token; set one (e.g. tokenizer.{names[0]}_token)")


def _encode_text(tokenizer: Any, text: str, triplet: Triplet, part: str) -> list[int]:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if not ids:
        raise InputValueError(f"the tokenizer encodes the {part} {text!r} of triplet {triplet} as no tokens")
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and unk in ids:
        raise InputValueError(f"the tokenizer cannot encode the {part} {text!r} of triplet {triplet} "
                              f"(it yields the unknown token {tokenizer.unk_token!r})")
    return ids


def encode(
    graph: KnowledgeGraph,
    tokenizer: Any,
    templates: TemplateChoice = "train",
    prepend_bos: bool = True,
) -> KGBatch:
    """One row per (triplet, template), in graph order then template order.

    ``tokenizer`` is a Hugging Face tokenizer (``model.tokenizer``). With
    ``prepend_bos`` (the TransformerLens default) each row starts with BOS.
    Padding uses the pad token, else EOS.
    """
    if not callable(getattr(tokenizer, "encode", None)):
        raise InputTypeError(f"tokenizer must be a Hugging Face tokenizer (e.g. model.tokenizer), got {tokenizer!r}")
    table = resolve_templates(graph, templates)
    start = [_special_id(tokenizer, "bos")] if prepend_bos else []
    pad = _special_id(tokenizer, "pad", "eos")
    rows: list[tuple[list[int], int, int]] = []  # (ids, first tail position, triplet index)
    sentences, used = [], []
    for i, triplet in enumerate(graph):
        for template in table[triplet.relation]:
            prefix, tail = fill(template, triplet.head, triplet.tail)
            ids = start + _encode_text(tokenizer, prefix, triplet, "prefix")
            rows.append((ids + _encode_text(tokenizer, tail, triplet, "tail"), len(ids), i))
            sentences.append(prefix + tail)
            used.append(template)
    width = max(len(ids) for ids, _, _ in rows)
    tokens = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for r, (ids, tail_start, _) in enumerate(rows):
        tokens[r, : len(ids)] = torch.tensor(ids)
        labels[r, tail_start - 1 : len(ids) - 1] = torch.tensor(ids[tail_start:])
    return KGBatch(
        tokens=tokens,
        labels=labels,
        label_mask=labels != IGNORE_INDEX,
        first_label_pos=torch.tensor([tail_start - 1 for _, tail_start, _ in rows]),
        lengths=torch.tensor([len(ids) for ids, _, _ in rows]),
        triplet_index=torch.tensor([i for _, _, i in rows]),
        sentences=sentences,
        templates=used,
    )


def tail_nll(model: torch.nn.Module, batch: KGBatch, batch_size: int = 64) -> Float[Tensor, "batch"]:
    """Mean negative log-likelihood of each row's tail tokens under ``model`` (no grad)."""
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for lo in range(0, len(batch), batch_size):
            mb = batch[lo : lo + batch_size].to(device)
            logits = model(mb.tokens)
            nll = F.cross_entropy(logits.transpose(1, 2).float(), mb.labels, reduction="none")
            out.append((nll.sum(1) / mb.label_mask.sum(1)).cpu())
    return torch.cat(out)


def best_templates(model: torch.nn.Module, graph: KnowledgeGraph, tokenizer: Any = None,
                   prepend_bos: bool = True, batch_size: int = 64) -> dict[str, str]:
    """Per relation, the training template under which ``model`` finds the tails most likely.

    As in Bayazit et al.: the template with the lowest tail perplexity (mean
    per-sentence tail NLL over the relation's triplets; ties go to the
    earlier template). Held-out templates are never considered.
    """
    tokenizer = model.tokenizer if tokenizer is None else tokenizer
    batch = encode(graph, tokenizer, "train", prepend_bos=prepend_bos)
    nll = tail_nll(model, batch, batch_size)
    scores: dict[tuple[str, str], list[float]] = {}
    for row, template in enumerate(batch.templates):
        relation = graph[int(batch.triplet_index[row])].relation
        scores.setdefault((relation, template), []).append(float(nll[row]))
    return {
        relation: min(graph.templates[relation],
                      key=lambda t: sum(scores[relation, t]) / len(scores[relation, t]))
        for relation in graph.relations
    }
