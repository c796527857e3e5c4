"""``Search``: a search's working state, and its step, validation and result.

One step draws the masks once, adds the losses (``losses``) and updates the mask
scores; the model's weights stay frozen. A non-finite loss, gradient or score
updates nothing and sets ``fault`` instead, naming the values.
"""

from __future__ import annotations

from contextlib import nullcontext

import pandas as pd
import torch
from torch import Tensor

from kcs_tl.adapters import check_model, model_device
from kcs_tl.discovery.checkpoints import SearchState, restore_checkpoint, write_checkpoint
from kcs_tl.discovery.config import DiscoveryConfig, checked_config, resolve_device
from kcs_tl.discovery.losses import step_losses
from kcs_tl.discovery.prepare import prepare
from kcs_tl.discovery.result import Discovery
from kcs_tl.discovery.selection import is_better, validation_scores
from kcs_tl.discovery.terms import Lagrangian
from kcs_tl.files import writable_folder
from kcs_tl.masks.masked_model import MaskedModel, plan_sites
from kcs_tl.masks.relaxations import get_relaxation


def _nonfinite(modules, grads: bool) -> list[str]:
    """The trained tensors (or their gradients) holding NaN or inf, as 'what (k of n values)'."""
    named = [(n, p.grad if grads else p) for m in modules for n, p in m.named_parameters() if p.requires_grad]
    named = [(n, t) for n, t in named if t is not None]
    if not named or bool(torch.stack([t.isfinite().all() for _, t in named]).all()):
        return []
    out = []
    for n, t in named:
        bad = int((~t.isfinite()).sum())
        if bad:
            what = (f"mask scores of {n.removeprefix('scores.').replace('__', '.')}" if n.startswith("scores.")
                    else f"ablation values of {n.removeprefix('replacements.').replace('__', '.')}"
                    if n.startswith("replacements.") else f"Lagrangian multiplier {n}")
            out.append(f"{what} ({bad} of {t.numel()} values)")
    return out


class Search:
    """A search's working state: attached masks, cached original outputs, optimisers.

    ``discover`` drives it; ``step()`` is one optimisation step, the unit that
    ``benchmarks/step_cost.py`` times. ``close()`` (or leaving a ``with`` block)
    detaches the masks.
    """

    def __init__(self, model, target, control_kg, control_lm, config: DiscoveryConfig | None = None):
        self.cfg = cfg = checked_config(config)
        check_model(model)
        # Every setting is checked against this model before anything expensive runs.
        fields = tuple(f"DiscoveryConfig.{f}" for f in ("weights", "hooks", "layers"))
        sites = plan_sites(model, cfg.weights, cfg.hooks, cfg.layers, cfg.granularity, fields)
        self.device = resolve_device(cfg)
        relaxation = get_relaxation(cfg.relaxation, **cfg.relaxation_options)
        if cfg.checkpoint_every:
            writable_folder(cfg.checkpoint_dir)
        # From here on the model changes (device, then masks); any exception puts it back as it was.
        home, self.masked = model_device(model), None
        try:
            if home != self.device:
                model.to(self.device)
            self.data = prepare(model, target, control_kg, control_lm, cfg, self.device,
                                min(s.layer for s in sites.values()))
            self.lagrangian = (Lagrangian(1 - cfg.target_sparsity).to(self.device)
                               if cfg.target_sparsity is not None else None)
            self.gen = torch.Generator().manual_seed(cfg.seed)
            self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                             if cfg.bf16 and self.device.type == "cuda" else nullcontext())
            self.state = SearchState()
            self.fault: str | None = None  # why the search cannot go on (non-finite values)
            # Masks attach last, once every setting has been used without error.
            self.masked = MaskedModel(model, weights=cfg.weights, hooks=cfg.hooks, layers=cfg.layers,
                                      granularity=cfg.granularity, init_prob=cfg.init_prob,
                                      relaxation=relaxation).train()
            self.optimizers = [torch.optim.Adam([p for p in self.masked.parameters() if p.requires_grad],
                                                lr=cfg.lr)]
            if self.lagrangian is not None:
                self.optimizers.append(torch.optim.Adam(self.lagrangian.parameters(), lr=cfg.lagrangian_lr,
                                                        maximize=True))
            warmup = max(1, round(cfg.warmup_fraction * cfg.steps))
            self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizers[0],
                                                              lambda s: min(1.0, (s + 1) / warmup))
            self.trained = [self.masked] + ([self.lagrangian] if self.lagrangian is not None else [])
        except BaseException:
            if self.masked is not None:
                self.masked.detach()
            if home != self.device:
                model.to(home)
            raise

    def step(self) -> dict[str, Tensor]:
        """One optimisation step.

        A non-finite loss or gradient updates nothing and sets ``fault`` (which
        values went non-finite), so the masks stay at their last finite state.
        """
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)
        with self.autocast:
            terms = step_losses(self.masked, self.data, self.cfg, self.state.step, self.gen, self.lagrangian)
        if not torch.isfinite(terms["loss"]):
            self.fault = (f"non-finite loss at step {self.state.step} "
                          f"(terms: { {k: float(v.detach()) for k, v in terms.items()} })")
            return terms
        terms["loss"].backward()
        bad = _nonfinite(self.trained, grads=True)
        if bad:
            self.fault = f"non-finite gradients at step {self.state.step} in " + ", ".join(bad)
            return terms
        for o in self.optimizers:
            o.step()
        self.schedule.step()
        self.state.step += 1
        return terms

    def validate(self) -> dict:
        """Score the binary masks that would be returned; keep them if they are the best so far.

        Masks holding non-finite values are not scored: ``fault`` says which, and the
        best checkpoint stays what it was.
        """
        self.masked.check_frozen()
        bad = _nonfinite(self.trained, grads=False)
        if bad:
            self.fault = f"non-finite values at step {self.state.step} in " + ", ".join(bad)
            return {}
        val = validation_scores(self.masked, self.data, self.cfg)
        if is_better(val, self.state.best):
            self.state.best = {"step": self.state.step, **val}
            self.state.best_scores = {k: v.detach().clone() for k, v in self.masked.state_dict().items()}
        return val

    def save_checkpoint(self) -> None:
        write_checkpoint(self.cfg, self.trained, self.optimizers, self.schedule, self.gen, self.state)

    def load_checkpoint(self, path) -> None:
        self.state = restore_checkpoint(path, self.cfg, self.trained, self.optimizers, self.schedule, self.gen)

    def result(self, stopped: str) -> Discovery:
        """The chosen checkpoint (the rule of ``kcs_tl.discovery.selection``) as a Discovery."""
        if self.state.best is None:  # stopped before the first validation: judge the current masks
            self.validate()
        if self.state.best is None:
            raise RuntimeError(f"discover: no finite masks to return ({self.fault}); lower lr or check "
                               "the relaxation options")
        self.masked.load_state_dict(self.state.best_scores)
        best = self.state.best
        sub = self.masked.to_subnetwork(config=self.cfg.to_json(), best_step=best["step"], stopped=stopped,
                                        **self.data.setup)
        return Discovery(sub, pd.DataFrame(self.state.history), self.cfg, best["step"],
                         bool(best["criteria_met"]), stopped, dict(self.data.setup))

    def close(self) -> None:
        self.masked.detach()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
