"""What a patched run is scored by: the logits at each prompt's answer position.

Every metric maps answer logits ``[*patches, batch, d_vocab]`` to one number per
patch ``[*patches]`` (the mean over prompts), so the same function scores one
TransformerLens patching run and a batch of many neuron patches at once.
"""

from __future__ import annotations

from typing import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from kcs_tl import validate

METRICS = ("logprob", "logit_diff", "kl")
"""``logprob``: gold tail log-probability; ``logit_diff``: gold minus counterfactual tail logit;
``kl``: KL(clean || patched) of the next-token distribution (0 on the clean run)."""

Metric = Callable[[Float[Tensor, "*patches batch d_vocab"]], Float[Tensor, "*patches"]]


def answer_logits(logits: Float[Tensor, "*patches batch pos d_vocab"],
                  answer_pos: Int[Tensor, "batch"]) -> Float[Tensor, "*patches batch d_vocab"]:
    """The logits at each row's answer position."""
    index = answer_pos.to(logits.device)[:, None, None].expand(-1, 1, logits.shape[-1])
    index = index.expand(*logits.shape[:-3], *index.shape)
    return logits.gather(-2, index).squeeze(-2)


def answer_metric(name: str, gold: Int[Tensor, "batch"], counter: Int[Tensor, "batch"],
                  clean: Float[Tensor, "batch d_vocab"]) -> Metric:
    """The metric ``name`` (one of ``METRICS``) for prompts with these gold / counterfactual tails."""
    validate.choice("metric", name, METRICS)
    rows = torch.arange(len(gold), device=clean.device)
    gold, counter = gold.to(clean.device), counter.to(clean.device)
    clean_logp = clean.float().log_softmax(-1)

    def logprob(logits):
        return logits.float().log_softmax(-1)[..., rows, gold].mean(-1)

    def logit_diff(logits):
        return (logits[..., rows, gold] - logits[..., rows, counter]).float().mean(-1)

    def kl(logits):
        logp = logits.float().log_softmax(-1)
        return (clean_logp.exp() * (clean_logp - logp)).sum(-1).mean(-1)

    return {"logprob": logprob, "logit_diff": logit_diff, "kl": kl}[name]
