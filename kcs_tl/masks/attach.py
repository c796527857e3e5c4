"""How a mask attaches to a model: the one mechanism shared by training and results.

Weights are gated with ``torch.nn.utils.parametrize``: the model's own
``nn.Parameter`` stays where it is (moved under ``parametrizations.<name>.original``
while attached) and every read of ``attn.W_Q`` returns ``W_Q * gate``. Nothing is
copied, matrices without a mask are untouched, and removing the parametrization
gives back the very same Parameter, so the model is bit-identical afterwards.

Hook points are gated with a plain forward hook registered before any user hook:
``h * gate + replacement * (1 - gate)``. TransformerLens's ``run_with_hooks`` and
``run_with_cache`` add and reset their own hooks around ours, so user hooks and
caches see the masked activations and keep working.

A site carries at most one mask: a second one (which would multiply silently
with the first) is refused, for weights and hook points alike.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from kcs_tl.adapters import Site, activation_shape, hook_broadcast, hook_point, stored_layout, weight_target

GateFn = Callable[[str], Tensor]
ReplacementFn = Callable[[str], "Tensor | None"]


class _WeightGate(nn.Module):
    """Parametrization ``W -> W * gate(address)``, the gate rearranged from canonical to stored layout."""

    def __init__(self, address: str, gate: GateFn, layout: Callable[[Tensor], Tensor]):
        super().__init__()
        self.address = address
        self._gate = gate
        self._layout = layout

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self._layout(self._gate(self.address)).to(weight.dtype)


class Attachment:
    """Gates installed on a model's sites; ``detach()`` undoes every change.

    ``gate(address)`` returns the keep-gate (1 keeps a unit, 0 ablates it) in the
    site's mask shape; ``replacement(address)`` returns the value an ablated hook
    unit takes (``None`` means zero).
    """

    def __init__(self, model: nn.Module, sites: list[Site], gate: GateFn,
                 replacement: ReplacementFn = lambda address: None):
        self.model = model
        self.sites = list(sites)
        self._gate = gate
        self._replacement = replacement
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._weights: list[tuple[nn.Module, str]] = []
        try:
            for site in self.sites:
                self._install(site)
        except BaseException:
            self.detach()
            raise

    def _install(self, site: Site) -> None:
        target, name = (weight_target(self.model, site) if site.kind == "weight"
                        else (hook_point(self.model, site), None))
        masked = (parametrize.is_parametrized(target, name) if site.kind == "weight"
                  else any(getattr(h, "kcs_tl_mask", False) for h in target._forward_hooks.values()))
        if masked:
            raise RuntimeError(f"{site.address} already carries a mask; detach the other one first")
        if site.kind == "weight":
            layout = stored_layout(self.model, site)
            parametrize.register_parametrization(target, name, _WeightGate(site.address, self._gate, layout))
            self._weights.append((target, name))
        else:
            self._hooks.append(target.register_forward_hook(self._hook_fn(site), prepend=True))

    def _hook_fn(self, site: Site):
        # A bridge's hook point may carry heads flattened ([..., n_heads * d_head]): shape per position as the point does.
        units = activation_shape(self.model, site)

        def gate_activation(module, inputs, output):
            per_position = output.shape[2:]
            gate = hook_broadcast(site, self._gate(site.address)).expand(units).reshape(per_position)
            gate = gate.to(output.dtype)
            replacement = self._replacement(site.address)
            if replacement is None:
                return output * gate
            return output * gate + replacement.reshape(per_position).to(output.dtype) * (1 - gate)

        gate_activation.kcs_tl_mask = True  # how _install recognises a mask already on a hook point
        return gate_activation

    def detach(self) -> None:
        """Remove every gate, restoring the original Parameters and hooks."""
        for handle in self._hooks:
            handle.remove()
        for module, name in reversed(self._weights):
            parametrize.remove_parametrizations(module, name, leave_parametrized=False)
        self._hooks, self._weights = [], []

    @property
    def attached(self) -> bool:
        return bool(self._hooks or self._weights)
