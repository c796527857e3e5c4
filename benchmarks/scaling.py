"""How one discover step scales with the number of masked parameters.

Times one ``kcs_tl`` discover step (``Search.step``, the median of repeated
steps after warm-up) and meters its peak memory (see ``common``) on randomly
initialised GPT-2-shaped models with small synthetic batches, in two sweeps:
  (i)  depth: the top 1, 2, 4, 8, 12 layers masked on a GPT-2-small shape
       (12 layers, d_model 768), i.e. ``layers=tuple(range(12 - k, 12))``;
  (ii) width: d_model 128, 256, 512, 768 on a 4-layer model, the top 2 masked.
Prints, for each size, the masked parameters, step ms, peak MiB and ms per
million masked parameters, and saves a plot of both sweeps as a PNG.

The step also pays for costs that do not grow with the masks (the frozen
embedding and unembedding, the unmasked layers, the loss over the vocabulary),
so ms per million masked parameters falls as the masks grow; the slope between
sizes is the cost of the masks themselves. ``--vocab`` shrinks the vocabulary
to take the unembedding out of the picture.

On CPU it runs on one thread unless ``--threads`` says otherwise: on a
2-core machine shared with other jobs, torch's default of 2 threads made the
same forward pass about 10 times slower (and erratic) than 1 thread.

    python benchmarks/scaling.py                        # both sweeps, about 4 minutes on 1 CPU thread
    python benchmarks/scaling.py --vocab 8192           # smaller unembedding
    python benchmarks/scaling.py --quick --out /tmp/s.png   # tiny sizes, checks the fields only
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_seconds, peak_bytes, random_model, synthetic_data  # noqa: E402

from kcs_tl.discovery import DiscoveryConfig, Search  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "scaling.png"


def sweeps(quick: bool) -> list[tuple[str, int, int, tuple[int, ...]]]:
    """(sweep, d_model, n_layers, masked layers) for every measured size, grouped by model."""
    if quick:
        return ([("depth", 64, 2, tuple(range(2 - k, 2))) for k in (1, 2)]
                + [("width", d, 2, (1,)) for d in (64, 128)])
    return ([("depth", 768, 12, tuple(range(12 - k, 12))) for k in (1, 2, 4, 8, 12)]
            + [("width", d, 4, (2, 3)) for d in (128, 256, 512, 768)])


def measure(model, layers, kg, kg_len, lm_batch, lm_len, device, repeats, warmup) -> dict:
    """Step time, peak memory and masked-parameter count of one discover step with ``layers`` masked."""
    target, control, lm = synthetic_data(model, kg, kg_len, lm_batch, lm_len)
    cfg = DiscoveryConfig(layers=layers, kg_batch_size=kg, lm_batch_size=lm_batch, lm_block_len=lm_len,
                          device=str(device), progress=False, teacher_max_gib=8.0)
    with Search(model, target.to(device), control.to(device), lm.to(device), cfg) as search:
        masked = sum(p.numel() for p in search.masked.scores.values())
        seconds = median_seconds(search.step, device, repeats, warmup)
        peak = peak_bytes(search.step, device)
    return {"masked_params": masked, "step_s": seconds, "peak_bytes": peak,
            "ms_per_m": seconds * 1e3 / (masked / 1e6)}


def report(rows: list[dict]) -> None:
    print(f"\n{'sweep':6s} {'d_model':>7s} {'layers':>6s} {'masked':>6s} {'masked params':>14s} "
          f"{'step ms':>9s} {'peak MiB':>9s} {'ms / M masked':>13s}")
    for r in rows:
        print(f"{r['sweep']:6s} {r['d_model']:7d} {r['n_layers']:6d} {r['n_masked_layers']:6d} "
              f"{r['masked_params']:14,d} {r['step_s'] * 1e3:9.1f} {r['peak_bytes'] / 2**20:9.1f} "
              f"{r['ms_per_m']:13.2f}")


def plot(rows: list[dict], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for sweep, marker in (("depth", "o"), ("width", "s")):
        rs = [r for r in rows if r["sweep"] == sweep]
        if not rs:
            continue
        x = [r["masked_params"] / 1e6 for r in rs]
        label = (f"depth: masked layers of {rs[0]['n_layers']} (d_model {rs[0]['d_model']})" if sweep == "depth"
                 else f"width: d_model ({rs[0]['n_layers']} layers, top {rs[0]['n_masked_layers']} masked)")
        for ax, key, scale in ((axes[0], "step_s", 1e3), (axes[1], "peak_bytes", 2**-20)):
            ax.plot(x, [r[key] * scale for r in rs], marker=marker, label=label)
            for xi, r in zip(x, rs):
                tag = r["n_masked_layers"] if sweep == "depth" else r["d_model"]
                ax.annotate(str(tag), (xi, r[key] * scale), textcoords="offset points", xytext=(4, 4), fontsize=7)
    for ax, ylabel in ((axes[0], "discover step (ms, median)"), (axes[1], "peak memory (MiB)")):
        ax.set_xlabel("masked parameters (millions)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, vocab 500, 1 repeat: checks the fields")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--vocab", type=int, default=None, help="vocabulary size (default 50257; 500 with --quick)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--kg-batch", type=int, default=16, help="KG sentences per batch")
    p.add_argument("--kg-len", type=int, default=12, help="tokens per KG sentence")
    p.add_argument("--lm-batch", type=int, default=1, help="LM blocks per batch")
    p.add_argument("--lm-len", type=int, default=128, help="LM block length")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (see the module docstring)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the PNG goes")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup, args.vocab = 1, 1, args.vocab or 500
        args.kg_batch, args.kg_len, args.lm_batch, args.lm_len = 8, 12, 1, 32
    args.vocab = args.vocab or 50257
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)


def run(args: argparse.Namespace) -> list[dict]:
    """Both sweeps with the parsed settings; prints the table, saves the plot, returns the rows."""
    device = torch.device(args.device)
    torch.set_grad_enabled(True)
    setting = (f"KG {args.kg_batch}x{args.kg_len}, LM {args.lm_batch}x{args.lm_len}, vocab {args.vocab}, "
               f"{device} ({torch.get_num_threads()} threads), median of {args.repeats} after {args.warmup} warm-up")
    print(f"scaling: {setting}")
    start = time.perf_counter()
    rows, model, shape = [], None, None
    for sweep, d_model, n_layers, layers in sweeps(args.quick):
        if shape != (d_model, n_layers):  # one model per shape, reused across masked-layer counts
            model, shape = None, (d_model, n_layers)
            model = random_model(n_layers=n_layers, d_model=d_model, d_vocab=args.vocab,
                                 n_ctx=max(args.kg_len, args.lm_len), device=str(device))
        row = {"sweep": sweep, "d_model": d_model, "n_layers": n_layers, "n_masked_layers": len(layers)}
        row |= measure(model, layers, args.kg_batch, args.kg_len, args.lm_batch, args.lm_len, device,
                       args.repeats, args.warmup)
        rows.append(row)
        print(f"  {sweep} d_model {d_model}, {len(layers)}/{n_layers} layers masked: "
              f"{row['step_s'] * 1e3:.1f} ms", flush=True)
    report(rows)
    plot(rows, args.out, f"kcs_tl discover step: {setting}")
    print(f"\nplot: {args.out}   ({time.perf_counter() - start:.0f} s in all)")
    return rows


if __name__ == "__main__":
    main()
