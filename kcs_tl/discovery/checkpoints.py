"""The checkpoint file: everything needed to continue the same run, read back as tensors and plain data only."""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kcs_tl.discovery.config import DiscoveryConfig
from kcs_tl.files import atomic_file
from kcs_tl.validate import InputValueError


@dataclass
class SearchState:
    """What a checkpoint holds: enough to continue the same run."""

    step: int = 0
    history: list = field(default_factory=list)
    best: dict | None = None
    best_scores: dict | None = None


def _checkpoint_path(cfg: DiscoveryConfig) -> Path:
    return Path(cfg.checkpoint_dir) / "checkpoint.pt"


def write_checkpoint(cfg, trained, optimizers, schedule, gen, state: SearchState) -> None:
    """Save the run's state as ``checkpoint.pt`` in ``cfg.checkpoint_dir``, atomically (never half written)."""
    path = _checkpoint_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"config": cfg.to_json(), "trained": [m.state_dict() for m in trained],
               "optimizers": [o.state_dict() for o in optimizers], "schedule": schedule.state_dict(),
               "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
               "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
               "state": dataclasses.asdict(state)}
    with atomic_file(path) as tmp:
        torch.save(payload, tmp)


_CHECKPOINT_KEYS = ("config", "trained", "optimizers", "schedule", "generator", "torch_rng", "cuda_rng", "state")


def _read_checkpoint(path) -> dict:
    """A checkpoint's contents, read as tensors and plain data only: a file that would run code is refused."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(f"resume: {path} does not exist; give a checkpoint.pt or the checkpoint_dir "
                                "holding it")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
        lines = [line.strip() for line in str(err).splitlines()
                 if line.strip() and not line.strip().startswith(boilerplate)] or [type(err).__name__]
        code = next((line for line in lines if "GLOBAL" in line), None)  # a callable or class to import
        if code:
            raise InputValueError(f"resume: {path} holds Python objects other than tensors and plain data ({code}); "
                             "kcs_tl refuses to load it, because unpickling them could run code") from None
        raise InputValueError(f"resume: {path} is not a readable kcs_tl checkpoint ({lines[0][:200]})") from None
    if not isinstance(payload, dict) or any(k not in payload for k in _CHECKPOINT_KEYS):
        raise InputValueError(f"resume: {path} is not a kcs_tl checkpoint (needs the entries {list(_CHECKPOINT_KEYS)})")
    return payload


RESUMABLE_CHANGES = ("checkpoint_every", "checkpoint_dir", "progress", "early_stop")
"""Settings a resume may change: when files are written, what is shown, whether to stop at the criteria."""

SCHEDULE = ("steps", "warmup_fraction", "sparsity_start", "sparsity_end", "target_sparsity", "lagrangian_lr")
"""Settings that set the warm-up and the sparsity schedule (``steps`` sets both lengths)."""


def restore_checkpoint(path, cfg, trained, optimizers, schedule, gen) -> SearchState:
    """Load a checkpoint into the run: refused unless made with the same settings, ``RESUMABLE_CHANGES`` aside."""
    payload = _read_checkpoint(path)
    try:
        saved = DiscoveryConfig.from_json(payload["config"])
    except (TypeError, ValueError) as err:
        raise InputValueError(f"resume: {path} holds an invalid config: {err}") from None
    diff = [f.name for f in dataclasses.fields(cfg)
            if f.name not in RESUMABLE_CHANGES and getattr(saved, f.name) != getattr(cfg, f.name)]
    if diff:
        changed = "; ".join(f"{name} {getattr(saved, name)!r} there, {getattr(cfg, name)!r} now" for name in diff)
        moved = [name for name in diff if name in SCHEDULE]
        why = (f" ({', '.join(moved)} set the warm-up and the sparsity schedule: the steps already run followed "
               "the checkpoint's, so the result would match neither run)" if moved else "")
        raise InputValueError(f"resume: checkpoint {path} was made with other settings: {changed}{why}; resume with "
                         "the checkpoint's settings, or start a new search without resume (a resume may change "
                         f"only {', '.join(RESUMABLE_CHANGES)})")
    for m, s in zip(trained, payload["trained"]):
        m.load_state_dict(s)
    for o, s in zip(optimizers, payload["optimizers"]):
        o.load_state_dict(s)
    schedule.load_state_dict(payload["schedule"])
    gen.set_state(payload["generator"])
    torch.set_rng_state(payload["torch_rng"])
    if payload["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["cuda_rng"])
    return SearchState(**payload["state"])
