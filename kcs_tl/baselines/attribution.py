"""Attribution baselines: rank units or weights without training, keep the top ones as a subnetwork.

Units (neurons at ``mlp.hook_post``, heads at ``attn.hook_z``), scored on an
intervention task's search prompts against the quantity the intervention
should lower (``InterventionTask.objective``):

- ``integrated_gradients``: the knowledge-neurons scheme (Dai et al.), path
  from the intervened value r (zero or the mean) to the activation h, one
  site at a time: ``(h - r) * mean_alpha grad f(r + alpha (h - r))``, summed
  over prompts and positions (midpoint rule, ``steps`` points). The sum over a
  site's units equals f(h) - f(r) up to the quadrature error (completeness).
- ``grad_x_activation``: the same at the end point only, ``(h - r) * grad f(h)``.
- ``activation``: mean |h - r| over the prompts' real positions.
- ``random``: uniform scores.

Weights (a knowledge-critical subnetwork's sites): ``weight_magnitude`` |W|,
``grad_x_weight`` ``W * grad f(W)`` (first-order effect of removing the weight
on f), ``random``.

Each becomes a ``Subnetwork`` of exactly the requested size: the top units per
site with counts matched to a learned subnetwork (``like=``), or the global top
``size``. Integrated gradients are our own dozen lines rather than Captum's
``LayerIntegratedGradients``: the path runs from the intervened value r (the
same mean or zero the search uses), not from Captum's input baselines, one
hook site at a time through TransformerLens hooks, and Captum would be a new
dependency for that loop. The tests check completeness.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from jaxtyping import Float
from torch import Tensor

from kcs_tl import validate
from kcs_tl.adapters import HOOK_NAMES, Site, check_model, fingerprint, hook_site, model_device, weight_view
from kcs_tl.masks.attach import Attachment
from kcs_tl.masks.masked_model import ABLATIONS, mean_activations
from kcs_tl.subnetwork import Subnetwork
from kcs_tl.validate import InputValueError

UNIT_METHODS = ("integrated_gradients", "grad_x_activation", "activation", "random")
WEIGHT_METHODS = ("weight_magnitude", "grad_x_weight", "random")


def _unit_sum(site: Site, x: Tensor) -> Float[Tensor, "units"]:
    """Sum a ``[batch, pos, units(, d_head)]`` tensor down to one value per unit."""
    return x.sum(dim=(0, 1, 3)) if site.name == "hook_z" else x.sum(dim=(0, 1))


def hook_sites(model, hooks=("mlp.hook_post",), layers=None) -> list[Site]:
    """The hook sites of ``hooks`` in ``layers`` (``None``: every layer)."""
    check_model(model)
    hooks = validate.names("hooks", hooks, HOOK_NAMES)
    layers = range(model.cfg.n_layers) if layers is None else validate.layers("layers", layers)
    bad = [l for l in layers if l >= model.cfg.n_layers]
    if bad:
        raise InputValueError(f"layers {bad} out of range: this model has layers 0..{model.cfg.n_layers - 1}")
    return [hook_site(model, l, h) for l in layers for h in hooks]


def replacement_values(model, task, sites: list[Site], ablation: str) -> dict[str, Tensor]:
    """The intervened value per site: zeros, or the mean over the task's LM blocks (as the search uses)."""
    validate.choice("ablation", ablation, [a for a in ABLATIONS if a != "learned"])
    if ablation == "mean":
        return {a: v.to(model_device(model))
                for a, v in mean_activations(model, task.lm.to(model_device(model)), sites).items()}
    return {}


def unit_attributions(model, task, method: str, sites: list[Site], replacements: dict[str, Tensor],
                      steps: int = 20, seed: int = 0) -> dict[str, Float[Tensor, "units"]]:
    """One score per unit and site: high means intervening on it should lower ``task.objective`` most."""
    validate.choice("method", method, UNIT_METHODS)
    steps = validate.integer("steps", steps, 1)
    device = model_device(model)
    prompts = task.train.to(device)
    if method == "random":
        gen = torch.Generator().manual_seed(seed)
        return {s.address: torch.rand(s.shape, generator=gen) for s in sites}
    names = [s.address for s in sites]
    with torch.no_grad():
        logits, cache = model.run_with_cache(prompts.tokens, names_filter=lambda n: n in names)
        sign = torch.sign(_pair_gap(prompts.read(logits).float(), prompts))
    out = {}
    for s in sites:
        h = cache[s.address].float()
        r = replacements.get(s.address, torch.zeros(h.shape[2:], device=device))
        if method == "activation":
            real = (torch.arange(h.shape[1], device=device)[None] <= prompts.positions[:, None]).float()
            diff = (h - r).abs() if s.name == "hook_post" else (h - r).norm(dim=-1, keepdim=True)
            out[s.address] = (_unit_sum(s, diff * real.view(*real.shape, *[1] * (diff.dim() - 2)))
                              / real.sum()).cpu()
            continue
        alphas = [1.0] if method == "grad_x_activation" else [(k + 0.5) / steps for k in range(steps)]
        grad = torch.zeros_like(h)
        for alpha in alphas:
            x = (r + alpha * (h - r)).detach().requires_grad_(True)
            logits = model.run_with_hooks(prompts.tokens, fwd_hooks=[(s.address, lambda act, hook, x=x: x)])
            f = task.objective(prompts.read(logits), prompts, sign)
            grad += torch.autograd.grad(f, x)[0]
        out[s.address] = _unit_sum(s, (h - r) * grad / len(alphas)).detach().cpu()
    return out


def _pair_gap(logits: Tensor, prompts) -> Tensor:
    lp = logits.log_softmax(-1)
    return lp.gather(-1, prompts.a[:, None])[:, 0] - lp.gather(-1, prompts.b[:, None])[:, 0]


def weight_attributions(model, sites: list[Site], method: str,
                        objective: Callable[[object], Tensor] | None = None,
                        seed: int = 0) -> dict[str, Tensor]:
    """One score per mask entry of each weight site (a row/column gate sums its weights' scores).

    ``objective(model)`` is the scalar that removing the subnetwork should lower
    (e.g. the gold log-probability of the facts to forget); ``grad_x_weight`` needs it.
    """
    validate.choice("method", method, WEIGHT_METHODS)
    gen = torch.Generator().manual_seed(seed)
    if method == "random":
        return {s.address: torch.rand(s.shape, generator=gen) for s in sites}
    if method == "grad_x_weight":
        if objective is None:
            raise InputValueError("method 'grad_x_weight' needs an objective(model) -> scalar to differentiate")
        full = _grad_x_weight(model, sites, objective)
    else:
        full = {s.address: weight_view(model, s).detach().abs().float() for s in sites}
    out = {}
    for s in sites:
        axes = tuple(i for i, (f, m) in enumerate(zip(s.full_shape, s.shape)) if m == 1 and f != 1)
        out[s.address] = (full[s.address].sum(dim=axes, keepdim=True) if axes else full[s.address]).cpu()
    return out


def _grad_x_weight(model, sites: list[Site], objective: Callable[[object], Tensor]) -> dict[str, Tensor]:
    """``W * grad f(W)`` per weight, in canonical layout on either class.

    It is the gradient of f with respect to a gate of ones multiplying W, attached
    as a mask is, so a bridge's stored layout is converted by the adapter. Made
    contiguous so that row/column sums add in one order, whatever strides autograd returns.
    """
    whole = [dataclasses.replace(s, granularity="weight", shape=s.full_shape) for s in sites]
    device = model_device(model)
    ones = {s.address: torch.ones(s.shape, device=device, requires_grad=True) for s in whole}
    attachment = Attachment(model, whole, ones.__getitem__)
    try:
        grads = torch.autograd.grad(objective(model), list(ones.values()), allow_unused=True)
    finally:
        attachment.detach()
    return {a: (g if g is not None else torch.zeros_like(o)).contiguous() for (a, o), g in zip(ones.items(), grads)}


def top_subnetwork(model, sites: list[Site], scores: dict[str, Tensor], *, like: Subnetwork | None = None,
                   size: int | None = None, replacements: dict[str, Tensor] | None = None,
                   method: str = "attribution") -> Subnetwork:
    """The highest-scoring entries: per site as many as ``like`` has there, or the global top ``size``."""
    if (like is None) == (size is None):
        raise InputValueError("give exactly one of like= (a Subnetwork whose per-site counts to match) "
                              "or size= (an int)")
    if like is not None:
        if set(like.sites) != {s.address for s in sites}:
            raise InputValueError(f"like= covers sites {sorted(like.sites)}, "
                                  f"the scores cover {[s.address for s in sites]}")
        counts = {a: int(m.sum()) for a, m in like.masks.items()}
    else:
        total = sum(int(scores[s.address].numel()) for s in sites)
        size = validate.integer("size", size, 0, total)
        flat = torch.cat([scores[s.address].flatten() for s in sites])
        chosen = torch.zeros(total, dtype=torch.bool)
        chosen[flat.argsort(descending=True, stable=True)[:size]] = True
        counts, lo = {}, 0
        for s in sites:
            n = scores[s.address].numel()
            counts[s.address] = int(chosen[lo : lo + n].sum())
            lo += n
    masks = {}
    for s in sites:
        flat = torch.zeros(scores[s.address].numel(), dtype=torch.bool)
        flat[scores[s.address].flatten().argsort(descending=True, stable=True)[: counts[s.address]]] = True
        masks[s.address] = flat.reshape(s.shape)
    return Subnetwork(masks, {s.address: s for s in sites}, fingerprint(model),
                      {a: v.detach().float().cpu() for a, v in (replacements or {}).items()},
                      {"derived": method})


def unit_baseline(model, task, method: str, *, like: Subnetwork | None = None, size: int | None = None,
                  hooks=("mlp.hook_post",), layers=None, ablation: str = "mean", steps: int = 20,
                  seed: int = 0) -> Subnetwork:
    """A unit subnetwork chosen by ``method`` (``UNIT_METHODS``) on ``task``, of exactly the requested size.

    With ``like``, its sites, per-site counts and ablation are used.
    """
    if like is not None:
        sites = list(like.sites.values())
        ablation = "mean" if like.replacements else "zero"
    else:
        sites = hook_sites(model, hooks, layers)
    repl = (like.replacements if like is not None and like.settings.get("ablation") == "learned"
            else replacement_values(model, task, sites, ablation))
    device = model_device(model)
    repl = {a: v.to(device) for a, v in repl.items()}
    scores = unit_attributions(model, task, method, sites, repl, steps, seed)
    return top_subnetwork(model, sites, scores, like=like, size=size, replacements=repl, method=method)


def weight_baseline(model, like: Subnetwork, method: str, objective=None, seed: int = 0) -> Subnetwork:
    """A weight subnetwork chosen by ``method`` (``WEIGHT_METHODS``) with ``like``'s per-site counts."""
    sites = list(like.sites.values())
    scores = weight_attributions(model, sites, method, objective, seed)
    return top_subnetwork(model, sites, scores, like=like, method=method)
