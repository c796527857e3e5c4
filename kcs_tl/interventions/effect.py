"""What an intervention does: the task's effect, and the damage to other text, beside random sets.

``evaluate_intervention`` scores the original model, the model with the
subnetwork's units intervened on, and random sets of the same size per site,
on the task's held-out test prompts (and search prompts) and held-out LM blocks:
perplexity, and KL(p_original || p) over every next-token distribution.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor

from kcs_tl import validate
from kcs_tl.adapters import model_device
from kcs_tl.baselines.random import random_like
from kcs_tl.discovery.teacher import TeacherOutputs
from kcs_tl.interventions.task import InterventionTask, Prompts
from kcs_tl.subnetwork import Subnetwork
from kcs_tl.validate import InputTypeError


@torch.no_grad()
def prompt_logits(model, prompts: Prompts, batch_size: int = 128) -> Tensor:
    """Logits at each prompt's read position, ``[n, vocab]``."""
    out = []
    for lo in range(0, len(prompts), batch_size):
        p = prompts[lo : lo + batch_size].to(model_device(model))
        out.append(p.read(model(p.tokens)).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def lm_logits(model, blocks: Int[Tensor, "n block"], batch_size: int = 16) -> Tensor:
    """Next-token logits at every position but the last, ``[n * (block - 1), vocab]``."""
    out = []
    for lo in range(0, len(blocks), batch_size):
        logits = model(blocks[lo : lo + batch_size].to(model_device(model)))[:, :-1]
        out.append(logits.reshape(-1, logits.shape[-1]).float().cpu())
    return torch.cat(out)


def _lm_scores(logits: Tensor, blocks: Tensor, teacher: TeacherOutputs) -> dict[str, float]:
    gold = blocks[:, 1:].reshape(-1)
    nll = torch.nn.functional.cross_entropy(logits, gold)
    return {"lm_ppl": math.exp(nll.item()), "lm_kl": teacher.kl(logits).mean().item()}


@dataclass
class InterventionEffect:
    """Original vs intervened vs random sets: one row per variant (random: mean over seeds)."""

    task: str
    effect_name: str
    n_units: int
    table: pd.DataFrame

    def value(self, variant: str, column: str) -> float:
        return float(self.table.loc[variant, column])

    @property
    def ppl_change(self) -> float:
        """Relative change of held-out LM perplexity under the intervention."""
        return self.value("intervened", "lm_ppl") / self.value("original", "lm_ppl") - 1

    @property
    def effect_change(self) -> float:
        """Relative change of the test effect (e.g. -0.8: the gender gap shrank by 80%)."""
        return self.value("intervened", "test_" + self.effect_name) / self.value("original", "test_" + self.effect_name) - 1

    def __repr__(self) -> str:
        with pd.option_context("display.width", 160, "display.max_columns", 20):
            return (f"InterventionEffect({self.task}: {self.n_units} units; test {self.effect_name} "
                    f"{self.value('original', 'test_' + self.effect_name):.3f} -> "
                    f"{self.value('intervened', 'test_' + self.effect_name):.3f}, LM perplexity "
                    f"{self.ppl_change:+.2%})\n{self.table.to_string(float_format=lambda x: f'{x:.4f}')}")

    def _repr_html_(self) -> str:
        return (f"<p><b>{self.task}</b>: {self.n_units} units intervened on; test {self.effect_name} "
                f"{self.value('original', 'test_' + self.effect_name):.3f} &rarr; "
                f"{self.value('intervened', 'test_' + self.effect_name):.3f}; LM perplexity "
                f"{self.ppl_change:+.2%}</p>" + self.table.to_html(float_format=lambda x: f"{x:.4f}"))


@torch.no_grad()
def evaluate_intervention(model, task: InterventionTask, subnetwork: Subnetwork, *, n_random: int = 3,
                          seed: int = 0) -> InterventionEffect:
    """Score ``subnetwork``'s intervention on ``task`` against the original and ``n_random`` random sets."""
    if not isinstance(task, InterventionTask):
        raise InputTypeError(f"task must be an InterventionTask (e.g. kcs_tl.interventions.agreement_task(z)), "
                             f"got {validate.given(task)}")
    if not isinstance(subnetwork, Subnetwork):
        raise InputTypeError(f"subnetwork must be a Subnetwork, got {validate.given(subnetwork)}")
    subnetwork.check_model(model)
    n_random = validate.integer("n_random", n_random, 0)
    seed = validate.integer("seed", seed, 0)
    original_lm = lm_logits(model, task.lm_test)
    teacher = TeacherOutputs.from_logits(original_lm, None)

    def scores(ctx, lm: Tensor | None = None) -> dict[str, float]:
        """The effect and LM scores under ``ctx``; ``lm``: its LM logits when already computed."""
        with ctx:
            row = {f"test_{task.effect_name}": task.effect(prompt_logits(model, task.test), task.test),
                   f"train_{task.effect_name}": task.effect(prompt_logits(model, task.train), task.train)}
            lm = lm_logits(model, task.lm_test) if lm is None else lm
            return row | _lm_scores(lm, task.lm_test, teacher)

    rows = {"original": scores(nullcontext(), original_lm), "intervened": scores(subnetwork.removed(model))}
    if n_random:
        runs = pd.DataFrame([scores(random_like(subnetwork, seed + i).removed(model)) for i in range(n_random)])
        rows["random"] = runs.mean().to_dict()
        rows["random_std"] = runs.std(ddof=0).to_dict()
    table = pd.DataFrame(rows).T
    return InterventionEffect(task.name, task.effect_name, subnetwork.n_in_subnetwork(), table)
