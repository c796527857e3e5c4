"""find_interventions(): the smallest set of neurons / heads whose intervention does what a task asks.

One gate per unit at hook points (``mlp.hook_post`` neurons, ``attn.hook_z``
heads) of the chosen layers. A gate value m = 1 intervenes on the unit: its
activation h becomes ``h * (1 - m) + r * m``, with r zero, the mean over the
task's LM blocks, or a learned value per unit. The loss is

    task loss (at the prompts' read positions)
    + kl_weight * KL(p_original || p) over every position of LM blocks
    + size penalty: l0_weight * expected number of units (expected L0), or a
      Lagrangian holding the expected number at ``target_units``.

``method="hard_concrete"`` trains the gates with the reparameterised Hard
Concrete relaxation (De Cao et al.); ``method="reinforce"`` trains Bernoulli
gates with the score-function estimator and a moving-average baseline, on
the same loss, penalty and number of forward passes per step.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from functools import partial

import pandas as pd
import torch
from tqdm.auto import tqdm

from kcs_tl import validate
from kcs_tl.adapters import HOOK_NAMES, check_model, model_device
from kcs_tl.discovery.teacher import TeacherOutputs
from kcs_tl.discovery.terms import Lagrangian
from kcs_tl.interventions import reinforce
from kcs_tl.interventions.counting import count_forwards
from kcs_tl.interventions.effect import InterventionEffect, evaluate_intervention, lm_logits
from kcs_tl.interventions.task import InterventionTask
from kcs_tl.masks.masked_model import ABLATIONS, MaskedModel
from kcs_tl.subnetwork import Subnetwork
from kcs_tl.validate import InputTypeError, InputValueError

METHODS = ("hard_concrete", "reinforce")


@dataclass
class InterventionConfig:
    """Every setting of ``find_interventions``; ``dataclasses.asdict`` gives it as JSON.

    ``l0_weight`` is the loss per expected intervened unit (expected L0): 0.01
    means 20 units cost as much as a task loss of 0.2. With ``target_units``
    set, a Lagrangian (``kcs_tl.discovery.terms.Lagrangian``, multipliers by
    gradient ascent at ``lagrangian_lr``) holds the expected number of units there
    instead (the multipliers act on expected units / held size), and
    ``l0_weight`` is unused. The held size falls linearly from the initial
    expected size (``init_prob`` of the units) to ``target_units`` over the
    first ``target_anneal`` of the steps, as Edge Pruning anneals its target:
    held at ``target_units`` from the start, the KL term and the Lagrangian
    shut nearly every gate before the task loss has picked any unit.
    """

    method: str = "hard_concrete"
    hooks: tuple[str, ...] = ("mlp.hook_post",)
    layers: tuple[int, ...] | None = None  # None: every layer
    ablation: str = "mean"  # "zero", "mean" (over the task's LM blocks) or "learned"
    kl_weight: float = 1.0
    l0_weight: float = 0.01
    target_units: int | None = None
    target_anneal: float = 0.5
    lagrangian_lr: float = 0.05
    init_prob: float = 0.5
    steps: int = 500
    lr: float = 0.1
    batch_size: int = 64
    lm_batch_size: int = 8
    baseline_decay: float = 0.9  # REINFORCE's moving-average baseline
    eval_every: int = 50
    seed: int = 0
    progress: bool = False

    def __post_init__(self):
        v = validate
        self.method = v.choice("InterventionConfig.method", self.method, METHODS)
        self.hooks = v.names("InterventionConfig.hooks", self.hooks, HOOK_NAMES)
        if not self.hooks:
            raise InputValueError(f"InterventionConfig.hooks is empty; give some of {HOOK_NAMES}")
        self.layers = v.optional(v.layers, "InterventionConfig.layers", self.layers)
        self.ablation = v.choice("InterventionConfig.ablation", self.ablation, ABLATIONS)
        for name in ("kl_weight", "l0_weight"):
            setattr(self, name, v.number(f"InterventionConfig.{name}", getattr(self, name), 0))
        self.target_units = v.optional(v.integer, "InterventionConfig.target_units", self.target_units, 1)
        self.target_anneal = v.number("InterventionConfig.target_anneal", self.target_anneal, 0, 1)
        self.lagrangian_lr = v.number("InterventionConfig.lagrangian_lr", self.lagrangian_lr, 0, 10, low_open=True)
        self.init_prob = v.fraction("InterventionConfig.init_prob", self.init_prob)
        self.lr = v.number("InterventionConfig.lr", self.lr, 0, 10, low_open=True)
        for name in ("steps", "batch_size", "lm_batch_size", "eval_every"):
            setattr(self, name, v.integer(f"InterventionConfig.{name}", getattr(self, name), 1))
        self.baseline_decay = v.number("InterventionConfig.baseline_decay", self.baseline_decay, 0, 1, high_open=True)
        self.seed = v.integer("InterventionConfig.seed", self.seed, 0)
        self.progress = v.boolean("InterventionConfig.progress", self.progress)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Intervention:
    """A found set of units, its measured effect, and what finding it cost."""

    subnetwork: Subnetwork
    effect: InterventionEffect
    history: pd.DataFrame  # step, forward passes, seconds, deterministic set size, train effect, LM KL
    forward_passes: int
    wall_s: float
    config: InterventionConfig

    @property
    def n_units(self) -> int:
        return self.subnetwork.n_in_subnetwork()

    def cost_to_reach(self, effect: float) -> tuple[int, float] | None:
        """(forward passes, seconds) when the train effect first reached ``effect`` or lower; None if never."""
        hit = self.history[self.history["train_effect"] <= effect]
        return None if hit.empty else (int(hit.forward_passes.iloc[0]), float(hit.wall_s.iloc[0]))

    def __repr__(self) -> str:
        return f"Intervention({self.config.method}, {self.forward_passes} forward passes, {self.wall_s:.1f} s)\n{self.effect!r}"

    def _repr_html_(self) -> str:
        return (f"<p>{self.config.method}: {self.forward_passes} forward passes, {self.wall_s:.1f} s</p>"
                + self.effect._repr_html_())


def _read_effect(model, masked: MaskedModel, task: InterventionTask) -> tuple[float, int]:
    """Train effect and size of the deterministic gates."""
    with masked.binary(), torch.no_grad():
        p = task.train.to(model_device(model))
        effect = task.effect(p.read(model(p.tokens)), p)
    return effect, int(sum(m.sum() for m in masked.binary_masks().values()))


def _held_size(config: InterventionConfig, step: int, total_units: int) -> float:
    """The size the Lagrangian holds at ``step``: annealed from the initial expected size to ``target_units``."""
    start = max(config.init_prob * total_units, config.target_units)
    left = max(0.0, 1 - step / max(config.target_anneal * config.steps, 1))
    return config.target_units + (start - config.target_units) * left


def find_interventions(model, task: InterventionTask, config: InterventionConfig | None = None, *,
                       n_random: int = 3, seed: int = 0) -> Intervention:
    """Search gates on ``task`` (see the module docstring); the model is left as it was.

    The result's ``effect`` is ``evaluate_intervention(..., n_random=n_random, seed=seed)``.
    """
    check_model(model)
    n_random = validate.integer("n_random", n_random, 0)
    seed = validate.integer("seed", seed, 0)
    if not isinstance(task, InterventionTask):
        raise InputTypeError(f"task must be an InterventionTask (agreement_task, gender_task or prompt_task), "
                             f"got {validate.given(task)}")
    config = config or InterventionConfig()
    if not isinstance(config, InterventionConfig):
        raise InputTypeError(f"config must be an InterventionConfig, got {validate.given(config)}")
    device = model_device(model)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    layers = config.layers if config.layers is not None else tuple(range(model.cfg.n_layers))
    teacher = TeacherOutputs.from_logits(lm_logits(model, task.lm).to(device), None)
    positions = torch.arange(task.lm.shape[1] - 1)
    relaxation = reinforce.Bernoulli() if config.method == "reinforce" else "hard_concrete"
    masked = MaskedModel(model, weights=(), hooks=config.hooks, layers=layers, relaxation=relaxation,
                         mode="remove", init_prob=config.init_prob, ablation=config.ablation,
                         reference=task.lm.to(device) if config.ablation != "zero" else None)
    try:
        total_units = sum(s.shape[0] for s in masked.sites.values())
        if config.target_units is not None and config.target_units > total_units:
            raise InputValueError(f"InterventionConfig.target_units={config.target_units} exceeds the "
                                  f"{total_units} units of the searched sites")
        scores = {a: masked.score(a) for a in masked.sites}
        params = [{"params": list(masked.scores.values()), "lr": config.lr}]
        if config.ablation == "learned":
            params.append({"params": list(masked.replacements.values()), "lr": config.lr * 0.1})
        optim = torch.optim.Adam(params)
        # The Lagrangian holds expected units / target_units at 1, so its multipliers are per
        # target-sized chunk of units and need no rescaling with the number of searched units.
        lagrangian = Lagrangian(1.0) if config.target_units else None
        lag_optim = (torch.optim.Adam(lagrangian.parameters(), lr=config.lagrangian_lr, maximize=True)
                     if lagrangian else None)
        baseline = reinforce.MovingBaseline(config.baseline_decay)
        train, lm = task.train.to(device), task.lm.to(device)
        history, start = [], time.perf_counter()
        masked.train()
        with count_forwards(model) as count:
            for step in tqdm(range(1, config.steps + 1), disable=not config.progress, desc=config.method):
                rows = torch.randint(len(train), (min(config.batch_size, len(train)),), generator=gen)
                lm_rows = torch.randint(len(lm), (min(config.lm_batch_size, len(lm)),), generator=gen)
                p = train[rows]
                with masked.step() as masks:
                    task_loss = task.loss(p.read(model(p.tokens)), p)
                    logits = model(lm[lm_rows])[:, :-1]
                    ref = teacher[(lm_rows[:, None] * len(positions) + positions).reshape(-1).to(device)]
                    kl = ref.kl(logits.reshape(-1, logits.shape[-1]).float()).mean()
                    loss = task_loss + config.kl_weight * kl
                    density = masked.expected_density()
                    units = density * total_units  # expected L0
                    penalty = (lagrangian(units / _held_size(config, step, total_units)) if lagrangian
                               else config.l0_weight * units)
                    objective = loss + penalty
                    if config.method == "reinforce":
                        objective = objective + reinforce.surrogate(loss, masks, scores, baseline())
                        baseline.update(loss.item())
                optim.zero_grad(set_to_none=True)
                if lag_optim:
                    lag_optim.zero_grad(set_to_none=True)
                objective.backward()
                optim.step()
                if lag_optim:
                    lag_optim.step()
                if step % config.eval_every == 0 or step == config.steps:
                    effect, size = _read_effect(model, masked, task)
                    history.append({"step": step, "forward_passes": count.calls,
                                    "wall_s": time.perf_counter() - start, "units": size,
                                    "expected_units": units.item(), "train_effect": effect,
                                    "task_loss": task_loss.item(), "lm_kl": kl.item()})
        wall = time.perf_counter() - start
        masked.eval()
        subnetwork = masked.to_subnetwork(intervention=config.to_json(), task=task.name)
    finally:
        masked.detach()
    effect = evaluate_intervention(model, task, subnetwork, n_random=n_random, seed=seed)
    return Intervention(subnetwork, effect, pd.DataFrame(history), count.calls, wall, config)
