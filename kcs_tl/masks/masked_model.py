"""MaskedModel: trainable mask scores attached to a HookedTransformer or TransformerBridge.

A mask value m = 1 puts a unit in the subnetwork. In ``mode="remove"`` the model
computes with 1 - m (the subnetwork is removed: the knowledge-critical search);
in ``mode="keep"`` it computes with m (only the subnetwork remains).

In training mode masks are relaxation draws, drawn once per model forward by
default; a search draws them once per step and reuses them for every loss term
with ``with masked.step():``. In eval mode (or inside ``with masked.binary():``)
the model computes with exactly the binary masks ``to_subnetwork()`` returns
(``binary_masks()``, the relaxation's ``binarize``), so whatever is scored in
eval mode is the result itself, for every relaxation.
"""

from __future__ import annotations

import math
import weakref
from contextlib import contextmanager
from typing import Iterable, Sequence

import torch
from jaxtyping import Bool, Int
from torch import Tensor, nn

from kcs_tl import validate
from kcs_tl.adapters import (
    HOOK_NAMES, Site, activation_shape, architecture, check_site, hook_site, model_device, resolve_layers,
    weight_site,
)
from kcs_tl.masks.attach import Attachment
from kcs_tl.masks.gates import check_mode, keep_gate
from kcs_tl.masks.relaxations import Relaxation, get_relaxation
from kcs_tl.precision import at_least_fp32
from kcs_tl.validate import InputError, InputValueError

ABLATIONS = ("zero", "mean", "learned")


def _key(address: str) -> str:
    """ParameterDict keys may not contain dots."""
    return address.replace(".", "__")


# Models frozen by attached MaskedModels: model -> (owners, each parameter's requires_grad before
# the first of them attached). The flags come back when the last owner detaches, in any order.
_FROZEN: "weakref.WeakKeyDictionary[nn.Module, tuple[set[int], list]]" = weakref.WeakKeyDictionary()


def _freeze(model: nn.Module, owner: object) -> None:
    if model not in _FROZEN:
        _FROZEN[model] = (set(), [(p, p.requires_grad) for p in model.parameters()])
        model.requires_grad_(False)
    _FROZEN[model][0].add(id(owner))


def _unfreeze(model: nn.Module, owner: object) -> None:
    owners, flags = _FROZEN.get(model, (set(), []))
    owners.discard(id(owner))
    if not owners and model in _FROZEN:
        del _FROZEN[model]
        for p, flag in flags:
            p.requires_grad_(flag)


def plan_sites(model, weights: Iterable[str] | None = None, hooks: Iterable[str] = (),
               layers: Iterable[int] | None = None, granularity: str = "weight",
               names: tuple[str, str, str] = ("weights", "hooks", "layers")) -> dict[str, Site]:
    """The sites a mask would cover, checked against ``model`` without running it (cheap).

    ``weights=None`` means every maskable matrix of the model's architecture.
    ``names`` are the argument names errors should use (``DiscoveryConfig.weights`` in a search).
    """
    arch = architecture(model)
    weights = arch.check_weights(names[0], weights)
    hooks = validate.names(names[1], hooks, HOOK_NAMES)
    try:
        chosen = resolve_layers(model, layers)
    except InputError as err:
        raise type(err)(str(err).replace("layers", names[2], 1)) from None
    sites: dict[str, Site] = {}
    for layer in chosen:
        for name in weights:
            s = weight_site(model, layer, name, granularity)
            sites[s.address] = check_site(model, s)
        for hook in hooks:
            s = hook_site(model, layer, hook)
            sites[s.address] = s
    if not sites:
        raise InputValueError(f"nothing to mask: {names[0]} and {names[1]} are both empty")
    return sites


@torch.no_grad()
def mean_activations(model, tokens: Int[Tensor, "batch pos"], sites: Sequence[Site]) -> dict[str, Tensor]:
    """Mean of each hook site's activation over batch and positions of ``tokens``."""
    names = [s.address for s in sites]
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    return {n: at_least_fp32(cache[n]).mean(dim=(0, 1)) for n in names}


class MaskedModel(nn.Module):
    """Mask scores for a set of sites, attached to ``model`` until ``detach()``.

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge``; its weights are frozen while attached.
        weights: matrices to mask per element/row/column, from
            ``W_Q, W_K, W_V, W_O, W_in, W_out`` and ``W_gate`` (gated MLPs);
            ``None`` (the default) masks every one the architecture has
            (``kcs_tl.architecture(model).weights``). Under grouped-query attention
            ``W_K``/``W_V`` are masked as stored, one matrix per key/value head.
            Biases, embeddings, layer norms and the unembedding are left out, as
            in Bayazit et al.: they are few parameters shared by every
            computation, so removing one would say little about where a
            particular fact is stored.
        hooks: ``"attn.hook_z"`` (one gate per head) and/or ``"mlp.hook_post"``
            (one gate per neuron).
        layers: layers to mask; ``None`` is the upper half of the model.
        granularity: ``"weight"`` (per element), ``"row"`` (per input unit) or
            ``"column"`` (per output unit) for weight masks.
        relaxation: a name from ``RELAXATIONS`` or a ``Relaxation``.
        mode: ``"remove"`` (model keeps 1 - m) or ``"keep"`` (model keeps m).
        init_prob: initial expected density of the subnetwork (0.45 in the paper).
        ablation: value of an ablated hook unit: ``"zero"``, ``"mean"`` over
            ``reference`` tokens, or ``"learned"`` (a trained placeholder
            initialised at the mean when ``reference`` is given, else zero).
    """

    def __init__(self, model, weights: Iterable[str] | None = None, hooks: Iterable[str] = (),
                 layers: Iterable[int] | None = None, granularity: str = "weight",
                 relaxation: str | Relaxation = "straight_through", mode: str = "remove",
                 init_prob: float = 0.45, ablation: str = "zero",
                 reference: Int[Tensor, "batch pos"] | None = None):
        super().__init__()
        self.sites: dict[str, Site] = plan_sites(model, weights, hooks, layers, granularity)
        validate.fraction("init_prob", init_prob)
        self.ablation = validate.choice("ablation", ablation, ABLATIONS)
        if ablation == "mean" and reference is None:
            raise InputValueError("ablation='mean' needs reference tokens to average activations over")
        if reference is not None:
            validate.tokens("reference", reference, model)
        self.mode = check_mode(mode)
        self.relaxation = get_relaxation(relaxation)
        self.layers = sorted({s.layer for s in self.sites.values()})
        device = model_device(model)
        start = self.relaxation.init_score(init_prob)
        self.scores = nn.ParameterDict({
            _key(a): nn.Parameter(torch.full(s.shape, start, device=device)) for a, s in self.sites.items()
        })
        self.replacements = self._replacement_values(model, reference)
        self._model = [model]  # a list keeps the model out of this module's parameters
        self._masks: dict[str, Tensor] | None = None
        self._holding = False
        self._disabled = False
        # Everything above only reads the model; attaching comes last and is undone if it fails.
        self._attachment = Attachment(model, list(self.sites.values()), self.gate, self.replacement)
        try:
            _freeze(model, self)
            self._pre_hook = model.register_forward_pre_hook(lambda *_: self._forget_masks())
        except BaseException:
            self._attachment.detach()
            _unfreeze(model, self)
            raise

    def _replacement_values(self, model, reference) -> nn.ParameterDict:
        hook_sites = [s for s in self.sites.values() if s.kind == "hook"]
        if self.ablation == "zero" or not hook_sites:
            return nn.ParameterDict()
        if reference is not None:
            means = mean_activations(model, reference, hook_sites)
        else:
            means = {s.address: torch.zeros(activation_shape(model, s)) for s in hook_sites}
        device = model_device(model)
        return nn.ParameterDict({
            _key(a): nn.Parameter(v.to(device), requires_grad=self.ablation == "learned")
            for a, v in means.items()
        })

    @property
    def model(self):
        return self._model[0]

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    # -- masks -------------------------------------------------------------

    def score(self, address: str) -> nn.Parameter:
        return self.scores[_key(address)]

    def binary_masks(self) -> dict[str, Bool[Tensor, "..."]]:
        """The subnetwork the current scores stand for: the relaxation's ``binarize`` per site.

        The one rule behind both ``to_subnetwork()`` and eval-mode masks.
        """
        return {a: self.relaxation.binarize(self.score(a)) for a in self.sites}

    def masks(self) -> dict[str, Tensor]:
        """Subnetwork membership m per site, reused until the next forward.

        Training mode: a draw of the relaxation. Eval mode: ``binary_masks()`` as 0/1
        floats (no gradient), never the relaxation's continuous deterministic gate.
        """
        if self._masks is None:
            if self.training:
                self._masks = {a: self.relaxation.sample(self.score(a)) for a in self.sites}
            else:
                self._masks = {a: m.to(self.score(a).dtype) for a, m in self.binary_masks().items()}
        return self._masks

    def gate(self, address: str) -> Tensor:
        """The multiplier the model computes with at ``address`` (all ones while ``disabled()``)."""
        if self._disabled:
            return self.score(address).new_ones((1,) * len(self.sites[address].shape))
        return keep_gate(self.masks()[address], self.mode)

    def replacement(self, address: str) -> Tensor | None:
        key = _key(address)
        return self.replacements[key] if key in self.replacements else None

    def _forget_masks(self) -> None:
        if not self._holding:
            self._masks = None

    @contextmanager
    def step(self):
        """Draw masks once and use them for every forward inside (one training step)."""
        self._masks, self._holding = None, True
        try:
            yield self.masks()
        finally:
            self._masks, self._holding = None, False

    def train(self, mode: bool = True):
        """Training draws (``True``) or the binary result masks (``False``); masks held from the other mode are dropped."""
        self._masks = None
        return super().train(mode)

    @contextmanager
    def binary(self):
        """Compute with exactly the binary subnetwork ``to_subnetwork()`` would return inside (eval mode).

        Use it to score "the result" (validation, evaluation); the training flag comes back after.
        """
        previous = self.training
        self.eval()
        try:
            yield self
        finally:
            self.train(previous)

    @contextmanager
    def disabled(self):
        """Compute as the original model inside (every gate is 1: bit-identical outputs), without detaching."""
        previous, self._disabled = self._disabled, True
        try:
            yield self
        finally:
            self._disabled = previous

    @contextmanager
    def as_mode(self, mode: str):
        """Temporarily compute with ``"keep"`` or ``"remove"`` (same masks, other side)."""
        previous, self.mode = self.mode, check_mode(mode)
        try:
            yield self
        finally:
            self.mode = previous

    def expected_density(self) -> Tensor:
        """Expected fraction of masked weights (or units) in the subnetwork, with a gradient.

        A row or column gate counts once for every weight it covers.
        """
        total, kept = 0, 0.0
        for a, s in self.sites.items():
            cover = math.prod(s.full_shape) // math.prod(s.shape)
            kept = kept + self.relaxation.density(self.score(a)).sum() * cover
            total += math.prod(s.full_shape)
        return kept / total

    # -- results and lifetime ----------------------------------------------

    def to_subnetwork(self, **settings):
        """The binary subnetwork of the current scores (``binary_masks()``: what eval mode computes with)."""
        from kcs_tl.subnetwork import Subnetwork

        return Subnetwork.from_masked(self, settings)

    def check_frozen(self) -> None:
        """Raise if any model weight can train or holds a gradient while masks are attached."""
        bad = [n for n, p in self.model.named_parameters() if p.requires_grad or p.grad is not None]
        if bad:
            raise RuntimeError(f"model weights must stay frozen while masks train; trainable: {bad[:5]}")

    def detach(self):
        """Remove all masks; the model is bit-identical to before and trainable as before.

        With several MaskedModels on one model, parameters stay frozen until the last one detaches.
        """
        if self._attachment.attached:
            self._attachment.detach()
            self._pre_hook.remove()
            _unfreeze(self.model, self)
        return self.model

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.detach()

    def __repr__(self):
        kinds = sorted({f"{s.module}.{s.name}" for s in self.sites.values()})
        return (f"MaskedModel(mode={self.mode!r}, relaxation={self.relaxation.name!r}, "
                f"layers={self.layers}, sites={kinds})")


def attach_masks(model, **options) -> MaskedModel:
    """Attach trainable masks to ``model``; see ``MaskedModel`` for the options."""
    return MaskedModel(model, **options)
