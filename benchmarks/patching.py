"""Patching on the built-in model's TargetKG facts, measured side by side in one process.

  (1) neurons: the batched patcher (many neurons per forward, ``patch_neurons``) vs one
      forward per neuron with a plain hook (``patch_neurons_looped``), on all neurons of
      the masked layers: seconds, peak memory, the speed-up and the largest difference;
  (2) attribution patching vs exact patching, for heads (all layers) and neurons:
      seconds, the speed-up, and their agreement (Spearman of |effect|, overlap of the
      top-k components).

    python benchmarks/patching.py            # all 13 facts, layers 2-3 (the demo's masked layers)
    python benchmarks/patching.py --quick    # 4 facts, layer 3: checks the fields only
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import mib, peak_bytes  # noqa: E402

from kcs_tl import zoo  # noqa: E402
from kcs_tl.analysis import attribute, knowledge_prompts, patch, spearman  # noqa: E402
from kcs_tl.analysis.answer_metrics import answer_logits, answer_metric  # noqa: E402
from kcs_tl.analysis.neuron_patching import patch_neurons, patch_neurons_looped  # noqa: E402
from kcs_tl.zoo.task import forgetting_task  # noqa: E402

def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _agreement(exact, approx) -> dict[str, float]:
    a, b = exact.table.effect.abs().to_numpy(), approx.table.effect.abs().to_numpy()
    k = max(1, len(a) // 10)
    top = lambda x: set(np.argsort(-x, kind="stable")[:k])  # noqa: E731
    return {"spearman": spearman(a, b), f"top{k} overlap": len(top(a) & top(b)) / k}


def run(quick: bool, device: str, corruption: str = "swap") -> dict[str, float]:
    z = zoo.load(device=device)
    model = z.model
    task = forgetting_task(z, 0, n_control=600 if not quick else 100, n_blocks=1)
    graph = task.target.subset(list(task.target)[:4]) if quick else task.target
    prompts = knowledge_prompts(model, graph, pool=[*task.target, *task.control]).to(model.cfg.device)
    layers = [3] if quick else [2, 3]
    tokens, hooks = prompts.corrupted(corruption)
    with torch.no_grad():
        clean_logits, cache = model.run_with_cache(prompts.clean)
    fn = answer_metric("logprob", prompts.gold, prompts.counter, answer_logits(clean_logits, prompts.answer_pos))
    clean = {layer: cache["post", layer] for layer in layers}
    args = (model, tokens, clean, fn, prompts.answer_pos, layers, hooks)
    dev = torch.device(model.cfg.device)
    batched, batched_s = _timed(lambda: patch_neurons(*args))
    looped, looped_s = _timed(lambda: patch_neurons_looped(*args))
    row = {"facts": len(prompts), "neurons": len(layers) * model.cfg.d_mlp, "batched_s": batched_s,
           "looped_s": looped_s, "looped / batched (s)": looped_s / batched_s,
           "max |batched - looped|": float((batched - looped).abs().max()),
           "batched_peak": peak_bytes(lambda: patch_neurons(*args), dev)}
    for kind, kind_layers in (("heads", None), ("neurons", layers)):
        granularity = kind[:-1]
        exact = patch(model, prompts, granularity, corruption=corruption, layers=kind_layers)
        approx = attribute(model, prompts, granularity, corruption=corruption, layers=kind_layers)
        row[f"exact_s, {kind}"] = exact.seconds
        row[f"attribution_s, {kind}"] = approx.seconds
        row[f"exact / attribution (s), {kind}"] = exact.seconds / approx.seconds
        row |= {f"{name}, {kind}": v for name, v in _agreement(exact, approx).items()}
    return row


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: check that everything runs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--corruption", default="swap", choices=("swap", "noise"))
    args = p.parse_args(argv)
    row = run(args.quick, args.device, args.corruption)
    print(f"tiny-world, {row['facts']} TargetKG facts, {row['neurons']} neurons, {args.corruption} corruption, "
          f"device {args.device}")
    print(f"(1) neurons: batched {row['batched_s']:.2f} s (peak {mib(row['batched_peak'])}, bound 256 MiB), "
          f"one forward per neuron {row['looped_s']:.2f} s: {row['looped / batched (s)']:.1f}x faster; "
          f"max |difference| {row['max |batched - looped|']:.2e}")
    for kind in ("heads", "neurons"):
        agree = ", ".join(f"{k.split(',')[0]} {v:.3f}" for k, v in row.items()
                          if k.endswith(f", {kind}") and not k.startswith(("exact", "attribution")))
        print(f"(2) {kind}: exact {row[f'exact_s, {kind}']:.2f} s, attribution {row[f'attribution_s, {kind}']:.2f} s "
              f"({row[f'exact / attribution (s), {kind}']:.1f}x faster); agreement of |effect|: {agree}")
    return row


if __name__ == "__main__":
    main()
