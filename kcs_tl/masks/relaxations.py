"""Relaxations: real-valued scores -> masks in [0, 1] that carry a gradient.

Pure torch, no TransformerLens. A mask value of 1 means "this unit belongs to
the subnetwork". Each relaxation gives a stochastic mask for training, a
deterministic gate, its ``binarize`` (the final membership: the gate above 0.5),
the expected density that the sparsity term penalises, and the score that starts
a mask at a chosen probability. A ``MaskedModel`` in eval mode computes with
``binarize``, not the deterministic gate, which for Hard Concrete and the plain
sigmoid is continuous and so describes a different model from the result.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from jaxtyping import Float
from torch import Tensor

from kcs_tl import validate
from kcs_tl.validate import InputValueError

_EPS = 1e-6


def _logistic_noise(like: Tensor) -> Tensor:
    u = torch.rand_like(like).clamp(_EPS, 1 - _EPS)
    return torch.log(u) - torch.log1p(-u)


class _ThresholdST(torch.autograd.Function):
    """Forward ``1[sigmoid(x / T) > 0.5]``; backward the gradient of ``sigmoid(x / T)``.

    Saves only the sigmoid for backward, one float per mask entry, where the
    ``hard + soft - soft.detach()`` idiom keeps a chain of temporaries alive.
    """

    @staticmethod
    def forward(ctx, x: Tensor, temperature: float) -> Tensor:
        soft = torch.sigmoid(x / temperature)
        ctx.save_for_backward(soft)
        ctx.temperature = temperature
        return (soft > 0.5).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (soft,) = ctx.saved_tensors
        return grad * soft * (1 - soft) / ctx.temperature, None


@dataclass(frozen=True)
class Relaxation:
    """Base: subclasses define ``sample``, ``deterministic``, ``density``, ``init_score``."""

    name = "base"

    def __call__(self, scores: Float[Tensor, "*shape"], training: bool) -> Float[Tensor, "*shape"]:
        return self.sample(scores) if training else self.deterministic(scores)

    def binarize(self, scores: Float[Tensor, "*shape"]) -> Tensor:
        """The final boolean membership: the deterministic mask above 0.5."""
        return self.deterministic(scores.detach()) > 0.5

    def to_json(self) -> dict:
        return {"name": self.name, **asdict(self)}


@dataclass(frozen=True)
class StraightThroughSigmoid(Relaxation):
    """sigmoid((score + logistic noise) / T), hard-thresholded at 0.5, straight-through.

    The Bayazit et al. relaxation. The hard mask is 1 exactly when
    score + noise > 0, so its expected value is sigmoid(score) whatever the
    temperature; the temperature only shapes the gradient.
    """

    temperature: float = 1.0
    name = "straight_through"

    def __post_init__(self):
        validate.number("straight_through temperature", self.temperature, 0, low_open=True)

    def sample(self, scores):
        return _ThresholdST.apply(scores + _logistic_noise(scores), self.temperature)

    def deterministic(self, scores):
        return _ThresholdST.apply(scores, self.temperature)

    def density(self, scores):
        return torch.sigmoid(scores)

    def init_score(self, prob: float) -> float:
        return math.log(prob / (1 - prob))


@dataclass(frozen=True)
class HardConcrete(Relaxation):
    """Hard Concrete gates of Louizos et al., as used by De Cao et al. (2021).

    ``density`` is the closed-form expected L0 (probability the gate is non-zero).
    """

    beta: float = 2 / 3
    gamma: float = -0.1
    zeta: float = 1.1
    name = "hard_concrete"

    def __post_init__(self):
        validate.number("hard_concrete beta", self.beta, 0, low_open=True)
        validate.number("hard_concrete gamma", self.gamma, high=0, high_open=True)
        validate.number("hard_concrete zeta", self.zeta, 1, low_open=True)

    def _stretch(self, s: Tensor) -> Tensor:
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def sample(self, scores):
        return self._stretch(torch.sigmoid((_logistic_noise(scores) + scores) / self.beta))

    def deterministic(self, scores):
        return self._stretch(torch.sigmoid(scores))

    def density(self, scores):
        return torch.sigmoid(scores - self.beta * math.log(-self.gamma / self.zeta))

    def init_score(self, prob: float) -> float:
        return math.log(prob / (1 - prob)) + self.beta * math.log(-self.gamma / self.zeta)


@dataclass(frozen=True)
class Sigmoid(Relaxation):
    """Plain deterministic sigmoid(score / T): continuous sparsification."""

    temperature: float = 1.0
    name = "sigmoid"

    def __post_init__(self):
        validate.number("sigmoid temperature", self.temperature, 0, low_open=True)

    def sample(self, scores):
        return torch.sigmoid(scores / self.temperature)

    deterministic = density = sample

    def init_score(self, prob: float) -> float:
        return self.temperature * math.log(prob / (1 - prob))


RELAXATIONS: dict[str, type[Relaxation]] = {
    cls.name: cls for cls in (StraightThroughSigmoid, HardConcrete, Sigmoid)
}


def get_relaxation(relaxation: str | Relaxation | dict = "straight_through", **options) -> Relaxation:
    """A relaxation from its name (with options), a saved dict, or itself."""
    if isinstance(relaxation, Relaxation):
        return relaxation
    if isinstance(relaxation, dict):
        options = {k: v for k, v in relaxation.items() if k != "name"} | options
        relaxation = relaxation.get("name")
    validate.choice("relaxation", relaxation, sorted(RELAXATIONS))
    cls = RELAXATIONS[relaxation]
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise InputValueError(f"relaxation {relaxation!r} has no option(s) {unknown}; its options are {valid}")
    return cls(**options)
