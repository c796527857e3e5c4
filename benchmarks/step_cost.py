"""Cost of one search step, side by side with plain training and with the published scheme.

On the same model and the same batches, in one process:
  (a) plain fine-tuning of the masked matrices: one forward of the KG sentences,
      one of the LM blocks, cross-entropy, backward, Adam on those weights;
  (b) one ``kcs_tl`` discover step (``Search.step``) with per-weight masks;
  (c) the published cost structure: a separate masked forward per loss term
      with masks re-drawn for each, fresh full-model forwards of the control
      batches every step, and an explicit ``[N, vocab]`` uniform target.
Prints median step times, peak memory, the ratios b/a and c/b, and the bytes
of mask state against the bytes of the masked weights, next to the targets.

    python benchmarks/step_cost.py            # built-in model + GPT-2-small shape
    python benchmarks/step_cost.py --quick    # tiny sizes, checks the fields only
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_seconds, mib, peak_bytes, random_model, synthetic_data  # noqa: E402

from kcs_tl.adapters import weight_target  # noqa: E402
from kcs_tl.discovery import DiscoveryConfig, Search  # noqa: E402
from kcs_tl.masks.masked_model import MaskedModel, plan_sites  # noqa: E402

TARGETS = {"b/a": ("<=", 1.5), "c/b": (">=", 2.0), "mask state / masked weights": ("<=", 3.0)}


def _masked_params(model, cfg: DiscoveryConfig) -> list[torch.nn.Parameter]:
    sites = plan_sites(model, cfg.weights, (), cfg.layers).values()
    return [getattr(*weight_target(model, s)) for s in sites]


def _kg_ce(logits, batch) -> torch.Tensor:
    return F.cross_entropy(logits[batch.label_mask].float(), batch.labels[batch.label_mask])


def finetune_step(model, target, control, lm, cfg: DiscoveryConfig):
    """(a): train the masked matrices themselves on the same batches."""
    params = _masked_params(model, cfg)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=1e-4)
    t, c, blocks = target[: cfg.kg_batch_size], control[: cfg.kg_batch_size], lm[: cfg.lm_batch_size]

    def step():
        loss = _kg_ce(model(t.tokens), t) + _kg_ce(model(c.tokens), c)
        loss = loss + F.cross_entropy(model(blocks)[:, :-1].flatten(0, 1).float(), blocks[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def undo():
        for p in params:
            p.requires_grad_(False)

    return step, undo


def published_step(model, target, control, lm, cfg: DiscoveryConfig):
    """(c): the published scheme's cost structure, written out plainly."""
    full = copy.deepcopy(model)  # the frozen full model the published code keeps beside the masked one
    masked = MaskedModel(model, weights=cfg.weights, layers=cfg.layers, init_prob=cfg.init_prob)
    opt = torch.optim.Adam(masked.parameters(), lr=cfg.lr)
    t, c, blocks = target[: cfg.kg_batch_size], control[: cfg.kg_batch_size], lm[: cfg.lm_batch_size]

    def step():
        # each masked forward below re-draws the masks (no shared draw per step)
        t_logp = model(t.tokens)[t.label_mask].float().log_softmax(-1)
        uniform = torch.full_like(t_logp, 1 / t_logp.shape[-1])
        loss = cfg.target_weight * F.kl_div(t_logp, uniform, reduction="batchmean")
        with torch.no_grad():
            c_full = full(c.tokens)[c.label_mask].float().softmax(-1)
            lm_full = full(blocks).flatten(0, 1).float().softmax(-1)
        c_logp = model(c.tokens)[c.label_mask].float().log_softmax(-1)
        loss = loss + F.kl_div(c_logp, c_full, reduction="batchmean")
        lm_logp = model(blocks).flatten(0, 1).float().log_softmax(-1)
        loss = loss + F.kl_div(lm_logp, lm_full, reduction="batchmean")
        loss = loss + cfg.sparsity_start * masked.expected_density()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, masked.detach


def mask_state_bytes(search: Search) -> tuple[int, int]:
    """(scores + optimiser moments, masked weights) in bytes."""
    def nbytes(t):
        return t.numel() * t.element_size()

    state = sum(nbytes(p) for p in search.masked.scores.values())
    state += sum(nbytes(v) for o in search.optimizers for s in o.state.values() for v in s.values()
                 if torch.is_tensor(v) and v.dim() > 0)
    weights = sum(nbytes(p) for p in _masked_params(search.masked.model, search.cfg))
    return state, weights


def measure(name, model, target, control, lm, cfg, device, repeats, warmup) -> dict:
    """Time and meter (a), (b), (c) on one model; returns the printed row."""
    row = {"model": name}
    step, undo = finetune_step(model, target, control, lm, cfg)
    row["a_s"] = median_seconds(step, device, repeats, warmup)
    row["a_peak"] = peak_bytes(step, device)
    undo()
    with Search(model, target, control, lm, cfg) as search:
        row["b_s"] = median_seconds(search.step, device, repeats, warmup)
        row["b_peak"] = peak_bytes(search.step, device)
        row["state"], row["weights"] = mask_state_bytes(search)
    step, undo = published_step(model, target, control, lm, cfg)
    row["c_s"] = median_seconds(step, device, repeats, warmup)
    row["c_peak"] = peak_bytes(step, device)
    undo()
    row["b/a"], row["c/b"] = row["b_s"] / row["a_s"], row["c_s"] / row["b_s"]
    row["mask state / masked weights"] = row["state"] / row["weights"]
    return row


def report(row: dict) -> None:
    print(f"\n== {row['model']}")
    for key, label in (("a", "(a) plain fine-tuning step"), ("b", "(b) discover step"),
                       ("c", "(c) published-scheme step")):
        print(f"  {label:30s} {row[key + '_s'] * 1e3:10.1f} ms   peak {mib(row[key + '_peak'])}")
    print(f"  mask state {mib(row['state'])} for {mib(row['weights'])} of masked weights")
    for ratio, (op, bound) in TARGETS.items():
        ok = row[ratio] <= bound if op == "<=" else row[ratio] >= bound
        print(f"  {ratio:28s} {row[ratio]:6.2f}   target {op} {bound}   {'meets' if ok else 'MISSES'}")


def builtin_case(quick: bool):
    from kcs_tl import zoo
    from kcs_tl.data import encode
    from kcs_tl.zoo.task import forgetting_task

    z = zoo.load("tiny-world")
    task = forgetting_task(z)
    cfg = DiscoveryConfig(progress=False, **({"kg_batch_size": 16, "lm_batch_size": 2} if quick else {}))
    return ("built-in tiny-world", z.model, encode(task.target, z.tokenizer), encode(task.control, z.tokenizer),
            task.lm, cfg)


def gpt2_case(quick: bool, device: str, kg_batch: int, lm_batch: int, lm_len: int):
    if quick:
        model = random_model(n_layers=2, d_model=64, d_vocab=500, n_ctx=64, device=device)
        kg_batch, lm_batch, lm_len = 8, 2, 32
    else:
        model = random_model(device=device)
    target, control, lm = synthetic_data(model, kg_batch, 12, lm_batch, lm_len)
    cfg = DiscoveryConfig(progress=False, kg_batch_size=kg_batch, lm_batch_size=lm_batch, device=device,
                          teacher_max_gib=8.0)
    name = "random GPT-2-small shape" if not quick else "random tiny GPT-2 shape (--quick)"
    return f"{name} (KG {kg_batch}x12, LM {lm_batch}x{lm_len})", model, target, control, lm, cfg


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat: checks the printed fields")
    p.add_argument("--models", default="builtin,gpt2", help="comma list from builtin, gpt2")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the discover step (CUDA)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--kg-batch", type=int, default=64, help="GPT-2 shape: KG sentences per batch")
    p.add_argument("--lm-batch", type=int, default=2, help="GPT-2 shape: LM blocks per batch")
    p.add_argument("--lm-len", type=int, default=256, help="GPT-2 shape: LM block length")
    args = p.parse_args(argv)
    repeats, warmup = (1, 1) if args.quick else (args.repeats, args.warmup)
    device = torch.device(args.device)
    torch.set_grad_enabled(True)
    print(f"step_cost on {device} ({torch.get_num_threads()} threads), median of {repeats} after {warmup} warm-up")
    rows = []
    for name in args.models.split(","):
        if name == "builtin":
            case = builtin_case(args.quick)
        elif name == "gpt2":
            case = gpt2_case(args.quick, args.device, args.kg_batch, args.lm_batch, args.lm_len)
        else:
            raise SystemExit(f"unknown model {name!r}; choose from builtin, gpt2")
        label, model, target, control, lm, cfg = case
        if next(model.parameters()).device != device:
            model.to(device)
        cfg.bf16, cfg.device = args.bf16, args.device
        rows.append(measure(label, model, target.to(device), control.to(device), lm.to(device), cfg, device,
                            repeats, warmup))
        report(rows[-1])
    return rows


if __name__ == "__main__":
    main()
