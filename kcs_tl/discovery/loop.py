"""``discover()``: run a ``Search`` to its end, stopping early, on Ctrl-C or at the first fault."""

from __future__ import annotations

import os
import warnings

import torch
from tqdm.auto import tqdm

from kcs_tl.discovery.config import DiscoveryConfig, checked_config
from kcs_tl.discovery.result import Discovery
from kcs_tl.discovery.search import Search


def discover(model, target, control_kg, control_lm, config: DiscoveryConfig | None = None,
             resume: str | os.PathLike | None = None) -> Discovery:
    """Find the subnetwork whose removal makes ``model`` forget ``target`` and keep the rest.

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge`` with a tokenizer; moved to the search's device.
        target: the TargetKG (``KnowledgeGraph`` or ``KGBatch``) to suppress.
        control_kg: the ControlKG to maintain; must not share triplets with ``target``.
        control_lm: LM text to maintain: token blocks ``[n, block_len]`` or a list of strings.
        config: a ``DiscoveryConfig``; defaults follow the paper.
        resume: a checkpoint file or folder written by an earlier run with the same config
            (``checkpoint_every``, ``checkpoint_dir``, ``progress`` and ``early_stop`` may differ).

    Ctrl-C stops the search and returns the best result so far. A non-finite loss,
    gradient or mask score stops it with a warning that names the values; the
    result is then the best checkpoint before that step. The global RNG is left as
    it was, and the model as it was found (also when anything raises).
    """
    cfg = checked_config(config)
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(cfg.seed)
        with Search(model, target, control_kg, control_lm, cfg) as search:
            if resume:
                search.load_checkpoint(resume)
            return search.result(run_search(search))


def run_search(search: Search) -> str:
    """Drive ``search`` to its end; returns why it stopped."""
    cfg, state = search.cfg, search.state
    bar = tqdm(total=cfg.steps, initial=state.step, disable=not cfg.progress, desc="discover")
    try:
        while state.step < cfg.steps:
            terms = search.step()
            if search.fault:
                return _stop_on_fault(search)
            row = {"step": state.step, **{k: float(v.detach()) for k, v in terms.items()}}
            if state.step % cfg.eval_every == 0 or state.step == cfg.steps:
                row |= search.validate()
                if search.fault:
                    return _stop_on_fault(search)
                bar.set_postfix(target=f"{row['val_target_top1']:.2f}", sparsity=f"{row['val_sparsity']:.4f}",
                                loss=f"{row['loss']:.3f}")
            state.history.append(row)
            bar.update()
            if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
                search.save_checkpoint()
            if cfg.early_stop and row.get("criteria_met"):
                return f"criteria met at step {state.step}"
        return "completed all steps"
    except KeyboardInterrupt:
        stopped = f"interrupted at step {state.step}; returning the best result so far"
        warnings.warn(f"discover: {stopped}", RuntimeWarning)
        return stopped
    finally:
        bar.close()


def _stop_on_fault(search: Search) -> str:
    """Stop at the last finite checkpoint, saying which values went non-finite."""
    best = search.state.best
    kept = (f"the result is the best checkpoint before it (step {best['step']})" if best is not None
            else "the result is the masks before that step")
    stopped = f"{search.fault}; stopped, {kept}"
    warnings.warn(f"discover: {stopped}", RuntimeWarning)
    return stopped
