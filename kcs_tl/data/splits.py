"""TargetKG / ControlKG splits that cannot leak, and IsA subtrees.

The released code of Bayazit et al. put 10 of 37 TargetKG triplets into the
ControlKG, so the suppression and maintenance losses fought each other.
Here every split is checked with ``check_disjoint`` before it is returned.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

import torch
from jaxtyping import Int
from torch import Tensor

from kcs_tl.data.kg import KnowledgeGraph, Triplet
from kcs_tl.validate import InputValueError


def check_disjoint(target: KnowledgeGraph, control: KnowledgeGraph, by_head: bool = False) -> None:
    """Raise ``ValueError`` naming the control triplets that repeat a target triplet.

    With ``by_head=True`` a control triplet about any target head entity is
    refused too (the control must not even mention what the target is about);
    this implies triplet disjointness.
    """
    if by_head:
        heads = set(target.heads)
        clash = [t for t in control if t.head in heads]
        what = "share a head entity with the target"
    else:
        clash = [t for t in control if t in target]
        what = "are also target triplets"
    if clash:
        shown = ", ".join(str(t) for t in clash[:5]) + (", ..." if len(clash) > 5 else "")
        raise InputValueError(f"{len(clash)} control triplet(s) {what}: {shown}")


def holdout(n: int, val_fraction: float, seed: int) -> tuple[Int[Tensor, "n_train"], Int[Tensor, "n_val"]]:
    """Shuffle ``range(n)`` with ``seed``; ``val_fraction`` of it (at least 1, never all) is validation."""
    if not 0 < val_fraction < 1:
        raise InputValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_val:], order[:n_val]


def target_control_split(
    graph: KnowledgeGraph,
    target: KnowledgeGraph | Iterable[Triplet],
    by_head: bool = False,
    n_control: int | None = None,
    seed: int = 0,
) -> tuple[KnowledgeGraph, KnowledgeGraph]:
    """Split ``graph`` into (TargetKG, ControlKG).

    The target is the given triplets (all from ``graph``); the control is
    every other triplet, minus those about a target head when ``by_head``,
    optionally sampled down to ``n_control`` triplets (deterministic in
    ``seed``, graph order kept).
    """
    target_kg = graph.subset(target, name=f"{graph.name}/target" if graph.name else "target")
    heads = set(target_kg.heads)
    rest = [t for t in graph if t not in target_kg and not (by_head and t.head in heads)]
    if not rest:
        raise InputValueError(f"nothing is left for the control set of {graph!r} (by_head={by_head})")
    if n_control is not None:
        if not isinstance(n_control, int) or not 0 < n_control <= len(rest):
            raise InputValueError(f"n_control must be an int in [1, {len(rest)}], got {n_control!r}")
        keep = set(random.Random(seed).sample(range(len(rest)), n_control))
        rest = [t for i, t in enumerate(rest) if i in keep]
    control_kg = graph.subset(rest, name=f"{graph.name}/control" if graph.name else "control")
    check_disjoint(target_kg, control_kg, by_head=by_head)
    return target_kg, control_kg


def subtree(graph: KnowledgeGraph, root: str, relation: str = "IsA") -> KnowledgeGraph:
    """The ``relation`` triplets whose chain of tails leads up to ``root``.

    Breadth-first from ``root``: first the triplets whose tail is ``root``,
    then those whose tail is one of their heads, and so on (cycles are safe).
    """
    if relation not in graph.relations:
        raise InputValueError(f"relation {relation!r} is not in {graph!r}; valid: {list(graph.relations)}")
    by_tail: dict[str, list[Triplet]] = {}
    for t in graph:
        if t.relation == relation:
            by_tail.setdefault(t.tail, []).append(t)
    if root not in by_tail:
        raise InputValueError(f"{root!r} is not the tail of any {relation!r} triplet of {graph!r}; "
                              f"tails include {sorted(by_tail)[:10]}")
    found: list[Triplet] = []
    seen, frontier = {root}, [root]
    while frontier:
        nodes, frontier = frontier, []
        for node in nodes:
            for t in by_tail.get(node, []):
                found.append(t)
                if t.head not in seen:
                    seen.add(t.head)
                    frontier.append(t.head)
    order = {t: i for i, t in enumerate(graph)}
    return graph.subset(sorted(found, key=order.__getitem__), name=root)
