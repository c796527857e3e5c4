"""REINFORCE over Bernoulli gates: the estimator De Cao et al. compare Hard Concrete with.

Each unit is intervened on with probability ``sigmoid(score)``; a sample is a
hard 0/1 mask that carries no gradient. The gradient of the expected loss is
estimated by the score function, ``(L(m) - b) * grad log p(m)``, with ``b`` a
moving average of past losses (it lowers the variance and adds no bias, since
``E[grad log p(m)] = 0``). The expected L0 is ``sum sigmoid(score)``, whose
gradient is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from kcs_tl import validate
from kcs_tl.masks.relaxations import Relaxation


@dataclass(frozen=True)
class Bernoulli(Relaxation):
    """Hard Bernoulli samples (no pathwise gradient); deterministic mask ``sigmoid(score) > 0.5``."""

    name = "bernoulli"

    def sample(self, scores):
        return torch.bernoulli(torch.sigmoid(scores.detach()))

    def deterministic(self, scores):
        return (scores.detach() > 0).to(scores.dtype)

    def density(self, scores):
        return torch.sigmoid(scores)

    def init_score(self, prob: float) -> float:
        return math.log(prob / (1 - prob))


def log_prob(masks: dict[str, Tensor], scores: dict[str, Tensor]) -> Tensor:
    """log p(m) of one joint sample under independent Bernoulli(sigmoid(score)) gates."""
    return sum((m * F.logsigmoid(s) + (1 - m) * F.logsigmoid(-s)).sum()
               for m, s in ((masks[a], scores[a]) for a in masks))


def surrogate(loss: Float[Tensor, ""], masks: dict[str, Tensor], scores: dict[str, Tensor],
              baseline: float) -> Tensor:
    """A scalar whose gradient w.r.t. the scores is the REINFORCE estimate ``(L - b) grad log p(m)``."""
    return (loss.detach() - baseline) * log_prob(masks, scores)


class MovingBaseline:
    """Exponential moving average of the loss; the first value starts it."""

    def __init__(self, decay: float = 0.9):
        self.decay = validate.number("baseline_decay", decay, 0, 1, high_open=True)
        self.value: float | None = None

    def __call__(self) -> float:
        return 0.0 if self.value is None else self.value

    def update(self, loss: float) -> None:
        self.value = loss if self.value is None else self.decay * self.value + (1 - self.decay) * loss
