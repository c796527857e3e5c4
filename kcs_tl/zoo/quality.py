"""Quality report for a zoo model: ``python -m kcs_tl.zoo.quality [--name tiny-world]``.

Measures
* top-1 accuracy of the tail's first token (greedy; logits at the position
  BEFORE the tail) on the training templates and on the held-out templates,
  encoded with :func:`kcs_tl.data.verbalise.encode`;
* subject-verb number agreement on held-out (noun, attractor) pairs: logit of
  the correct verb (" is"/" are", " was"/" were", " has"/" have") vs the wrong
  one, overall and with a mismatched attractor;
* P(she) / P(he) after "The <profession> said that" vs the training rate;
* perplexity on held-out narrative stories (and on the training stories).
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from kcs_tl.validate import InputValueError

__all__ = [
    "fact_accuracy",
    "agreement_accuracy",
    "gender_stats",
    "perplexity",
    "report",
]


@torch.no_grad()
def fact_accuracy(model, kg, templates: Any = "train", batch_size: int = 256, by_relation: bool = False):
    """Top-1 accuracy of the first tail token over every (triplet, template) row."""
    from kcs_tl.data.verbalise import encode
    from kcs_tl.evaluation import score_kg

    batch = encode(kg, model.tokenizer, templates)
    hits = (score_kg(model, batch, batch_size).rank == 0).float()
    acc = hits.mean().item()
    if not by_relation:
        return acc
    rel = [kg[int(i)].relation for i in batch.triplet_index]
    per = {}
    for r in dict.fromkeys(rel):
        idx = torch.tensor([j for j, x in enumerate(rel) if x == r])
        per[r] = hits[idx].mean().item()
    return acc, per


def _single_token(tokenizer, word: str) -> int:
    ids = tokenizer.encode(" " + word, add_special_tokens=False)
    if len(ids) != 1:
        raise InputValueError(f"{word!r} is not a single token: {ids}")
    return ids[0]


@torch.no_grad()
def _last_logits(model, prefixes: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    out = []
    for lo in range(0, len(prefixes), batch_size):
        chunk = list(prefixes[lo : lo + batch_size])
        toks = model.to_tokens(chunk, padding_side="right")
        lengths = (toks != model.tokenizer.pad_token_id).sum(1)  # the pad token never occurs in text
        logits = model(toks)
        out.append(logits[torch.arange(len(chunk)), lengths - 1])
    return torch.cat(out)


def agreement_accuracy(model, items) -> dict[str, float]:
    """Fraction of held-out items where the correct verb beats the wrong one."""
    tok = model.tokenizer
    logits = _last_logits(model, [it.prefix for it in items])
    good = torch.tensor([_single_token(tok, it.correct) for it in items])
    bad = torch.tensor([_single_token(tok, it.wrong) for it in items])
    rows = torch.arange(len(items))
    ok = (logits[rows, good] > logits[rows, bad]).float()
    mismatch = torch.tensor([it.plural_subject != it.attractor_plural for it in items])
    return {
        "accuracy": ok.mean().item(),
        "accuracy_attractor_mismatch": ok[mismatch].mean().item(),
        "accuracy_attractor_match": ok[~mismatch].mean().item(),
        "n": len(items),
    }


def gender_stats(model, items) -> list[dict]:
    """Per profession: mean P(she | she or he) after the prefix vs the training rate."""
    tok = model.tokenizer
    she, he = _single_token(tok, "she"), _single_token(tok, "he")
    logits = _last_logits(model, [it.prefix for it in items])
    probs = logits.softmax(-1)
    p_she = (probs[:, she] / (probs[:, she] + probs[:, he])).tolist()
    mass = (probs[:, she] + probs[:, he]).tolist()
    rows: dict[str, dict] = {}
    for it, p, m in zip(items, p_she, mass):
        r = rows.setdefault(it.profession, {"profession": it.profession, "train_p_she": it.p_she,
                                             "model_p_she": 0.0, "pronoun_mass": 0.0, "n": 0})
        r["model_p_she"] += p
        r["pronoun_mass"] += m
        r["n"] += 1
    for r in rows.values():
        r["model_p_she"] /= r["n"]
        r["pronoun_mass"] /= r["n"]
    return list(rows.values())


@torch.no_grad()
def perplexity(model, texts: Sequence[str], batch_size: int = 64) -> float:
    """Token-level perplexity (BOS prepended, BOS not scored) over ``texts``."""
    pad = model.tokenizer.pad_token_id
    total, count = 0.0, 0
    for lo in range(0, len(texts), batch_size):
        chunk = list(texts[lo : lo + batch_size])
        toks = model.to_tokens(chunk, padding_side="right")[:, : model.cfg.n_ctx]
        logits = model(toks)
        target = toks[:, 1:].clone()
        target[target == pad] = -100
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), target, ignore_index=-100, reduction="sum")
        total += nll.item()
        count += (target != -100).sum().item()
    return math.exp(total / count)


def report(zoo) -> dict:
    """All quality numbers for a loaded :class:`kcs_tl.zoo.ZooModel`."""
    model, kg = zoo.model, zoo.kg
    train_acc, train_rel = fact_accuracy(model, kg, "train", by_relation=True)
    held_acc, held_rel = fact_accuracy(model, kg, "held_out", by_relation=True)
    return {
        "n_triplets": len(kg),
        "fact_top1_train_templates": train_acc,
        "fact_top1_train_templates_by_relation": train_rel,
        "fact_top1_held_out_templates": held_acc,
        "fact_top1_held_out_templates_by_relation": held_rel,
        "agreement_held_out": agreement_accuracy(model, zoo.agreement_test),
        "gender": gender_stats(model, zoo.gender_test),
        "ppl_narrative_valid": perplexity(model, zoo.lm_text["validation"]),
        "ppl_narrative_train": perplexity(model, zoo.lm_text["train"][:200]),
    }


def _print(rep: dict) -> None:
    print(f"facts: {rep['n_triplets']} triplets")
    print(f"  top-1 first tail token, training templates: {rep['fact_top1_train_templates']:.4f}")
    for r, a in rep["fact_top1_train_templates_by_relation"].items():
        print(f"      {r:12s} {a:.4f}")
    print(f"  top-1 first tail token, held-out templates: {rep['fact_top1_held_out_templates']:.4f}")
    for r, a in rep["fact_top1_held_out_templates_by_relation"].items():
        print(f"      {r:12s} {a:.4f}")
    ag = rep["agreement_held_out"]
    print(f"agreement (held-out noun pairs, n={ag['n']}): {ag['accuracy']:.4f} "
          f"(attractor mismatch {ag['accuracy_attractor_mismatch']:.4f}, match {ag['accuracy_attractor_match']:.4f})")
    print("gender: profession  train P(she)  model P(she|she,he)  P(she)+P(he)")
    for r in rep["gender"]:
        print(f"  {r['profession']:10s} {r['train_p_she']:.2f}  {r['model_p_she']:.3f}  {r['pronoun_mass']:.3f}")
    print(f"perplexity: held-out narrative {rep['ppl_narrative_valid']:.3f}, "
          f"training narrative {rep['ppl_narrative_train']:.3f}")


def main(argv: Sequence[str] | None = None) -> dict:
    from kcs_tl.zoo import load

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="tiny-world")
    ap.add_argument("--path", default=None, help="a build directory instead of a shipped model")
    args = ap.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    zoo = load(args.name, path=args.path)
    rep = report(zoo)
    _print(rep)
    return rep


if __name__ == "__main__":
    main()
