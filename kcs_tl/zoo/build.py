"""Rebuild the built-in model from a seed: ``python -m kcs_tl.zoo.build [--seed 0] [--out DIR]``.

World -> tokenizer -> corpus -> a GPT-2-style ``HookedTransformer`` trained
from scratch on CPU.  Everything is a function of ``--seed`` (Python's
``random.Random`` for the world and the data order, ``torch.manual_seed`` for
the weights); with the same torch version and thread count the weights come
out the same.  Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from kcs_tl.zoo.tokenizer import BOS, PAD, train_tokenizer, wrap
from kcs_tl.zoo.world import generate_world, knowledge_graph, tokenizer_corpus, verbalise

DEFAULT_OUT = Path(__file__).resolve().parent / "tiny_world"

MODEL_CFG = dict(
    n_layers=4,
    d_model=128,
    d_head=32,
    n_heads=4,
    d_mlp=512,
    n_ctx=64,
    act_fn="gelu",
    normalization_type="LN",
    positional_embedding_type="standard",
    original_architecture="GPT2LMHeadModel",
)


def write_world(world, kg, tok, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    kg.save(out / "world.jsonl")
    (out / "lm_train.txt").write_text("\n".join(world.narrative_train) + "\n")
    (out / "lm_valid.txt").write_text("\n".join(world.narrative_valid) + "\n")
    (out / "agreement_train.txt").write_text("\n".join(world.agreement_train) + "\n")
    (out / "gender_train.txt").write_text("\n".join(world.gender_train) + "\n")
    with open(out / "agreement_test.jsonl", "w") as f:
        for it in world.agreement_test:
            f.write(json.dumps(asdict(it)) + "\n")
    with open(out / "gender_test.jsonl", "w") as f:
        for it in world.gender_test:
            f.write(json.dumps(asdict(it)) + "\n")
    meta = {
        "seed": world.seed,
        "target_roots": world.target_roots,
        "target_root_sizes": {r: len(world.subtree_triplets(r)) for r in world.target_roots},
        "roots": world.roots,
        "subcategories": world.subcategories,
        "subsubcategories": world.subsubcategories,
        "entities": world.entities,
        "cities": world.cities,
        "countries": world.countries,
        "languages": world.languages,
        **world.meta,
    }
    (out / "world_meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def training_documents(world, fact_reps: int) -> tuple[list[str], list[str]]:
    """(fact sentences, other documents): fact sentences use the TRAINING templates only."""
    facts = [verbalise(tp, h, t) for h, r, t in world.triplets for tp in world.templates[r]] * fact_reps
    other = world.narrative_train + world.agreement_train + world.gender_train
    return facts, other


def pack_epoch(doc_ids: list[list[int]], order: list[int], n_ctx: int, bos: int, pad: int) -> torch.Tensor:
    """Greedy packing: each block is [bos] doc [bos] doc ... padded with ``pad``."""
    blocks, cur = [], []
    for i in order:
        ids = [bos] + doc_ids[i]
        ids = ids[:n_ctx]
        if len(cur) + len(ids) > n_ctx:
            blocks.append(cur + [pad] * (n_ctx - len(cur)))
            cur = []
        cur = cur + ids
    if cur:
        blocks.append(cur + [pad] * (n_ctx - len(cur)))
    return torch.tensor(blocks, dtype=torch.long)


@torch.no_grad()
def quick_fact_acc(model, batch, n: int = 600) -> float:
    mb = batch[list(range(0, len(batch), max(1, len(batch) // n)))]
    logits = model(mb.tokens)
    rows = torch.arange(len(mb))
    return (logits[rows, mb.first_label_pos].argmax(-1) == mb.labels[rows, mb.first_label_pos]).float().mean().item()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--steps", type=int, default=3200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--fact-reps", type=int, default=3, help="copies of each fact sentence per epoch")
    ap.add_argument("--other-frac", type=float, default=0.4,
                    help="fraction of the narrative/agreement/gender documents drawn into each epoch")
    ap.add_argument("--stop-acc", type=float, default=0.99,
                    help="stop early once top-1 tail accuracy on ALL training-template rows reaches this")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--d-model", type=int, default=MODEL_CFG["d_model"])
    ap.add_argument("--n-layers", type=int, default=MODEL_CFG["n_layers"])
    args = ap.parse_args(argv)

    t0 = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)

    # ---- world, tokenizer, files -------------------------------------------
    world = generate_world(args.seed)
    kg = knowledge_graph(world)
    tok = train_tokenizer(tokenizer_corpus(world), vocab_size=args.vocab_size)
    fast = wrap(tok)
    write_world(world, kg, tok, args.out)
    print(f"world: {len(world.entities)} entities, {len(kg)} triplets, {len(kg.relations)} relations, "
          f"{len(world.target_roots)} target roots; vocab {tok.get_vocab_size()}", flush=True)

    # ---- model ------------------------------------------------------------
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from kcs_tl.data.verbalise import encode

    model_cfg = dict(MODEL_CFG, d_model=args.d_model, n_layers=args.n_layers, d_mlp=4 * args.d_model,
                     n_heads=args.d_model // MODEL_CFG["d_head"], d_vocab=tok.get_vocab_size(), seed=args.seed)
    cfg = HookedTransformerConfig(**model_cfg, device="cpu")
    model = HookedTransformer(cfg, tokenizer=fast, move_to_device=False)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters, cfg {model_cfg}", flush=True)
    eval_batch = encode(kg, fast, "train")
    held_batch = encode(kg, fast, "held_out")

    # ---- data -------------------------------------------------------------
    facts, other = training_documents(world, args.fact_reps)
    docs = facts + other
    n_facts = len(facts)
    uniq = sorted(set(docs))
    enc = {s: e.ids for s, e in zip(uniq, tok.encode_batch(uniq, add_special_tokens=False))}
    doc_ids = [enc[s] for s in docs]
    bos, pad = tok.token_to_id(BOS), tok.token_to_id(PAD)
    data_rng = random.Random(args.seed + 1)

    def epochs():
        epoch = 0
        while True:
            others = list(range(n_facts, len(docs)))
            data_rng.shuffle(others)
            order = list(range(n_facts)) + others[: int(args.other_frac * len(others))]
            data_rng.shuffle(order)
            blocks = pack_epoch(doc_ids, order, cfg.n_ctx, bos, pad)
            perm = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(args.seed * 1000 + epoch))
            blocks = blocks[perm]
            for lo in range(0, len(blocks) - args.batch_size + 1, args.batch_size):
                yield epoch, blocks[lo : lo + args.batch_size]
            epoch += 1

    # ---- optimisation -----------------------------------------------------
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "W_pos" not in n and "W_E" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "W_pos" not in n and "W_E" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98))

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        frac = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))

    from safetensors.torch import save_file

    log = []
    t_train = time.time()

    def save(steps_done: int, final: bool) -> None:
        """Checkpoint at every evaluation, so a usable model always exists."""
        state = {n: p.detach().contiguous() for n, p in model.named_parameters()}
        save_file(state, str(args.out / "model.safetensors"), metadata={"seed": str(args.seed)})
        build = {
            "command": f"python -m kcs_tl.zoo.build --seed {args.seed}",
            "args": {k: str(v) for k, v in vars(args).items()},
            "n_params": n_params,
            "steps_done": steps_done,
            "finished": final,
            "train_wall_s": round(time.time() - t_train, 1),
            "total_wall_s": round(time.time() - t0, 1),
            "final_loss_ema": round(running, 4),
            "torch": torch.__version__,
            "threads": args.threads,
            "log": log,
        }
        (args.out / "config.json").write_text(json.dumps({"model": model_cfg, "build": build}, indent=1) + "\n")

    model.train()
    running = None
    it = epochs()
    for step in range(args.steps):
        epoch, x = next(it)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        logits = model(x)
        target = x[:, 1:].clone()
        target[target == pad] = -100
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            model.eval()
            acc = quick_fact_acc(model, eval_batch)
            hacc = quick_fact_acc(model, held_batch)
            model.train()
            rec = {"step": step + 1, "epoch": epoch, "loss": round(running, 4), "fact_acc_train_tmpl": round(acc, 4),
                   "fact_acc_held_tmpl": round(hacc, 4), "lr": lr_at(step), "elapsed_s": round(time.time() - t0, 1)}
            stop = False
            if acc >= args.stop_acc:
                model.eval()
                full = quick_fact_acc(model, eval_batch, n=len(eval_batch))
                model.train()
                rec["fact_acc_train_tmpl_all"] = round(full, 4)
                stop = full >= args.stop_acc
            log.append(rec)
            print(json.dumps(rec), flush=True)
            save(step + 1, stop or step + 1 == args.steps)
            if stop:
                break

    model.eval()
    train_s = time.time() - t_train
    print(f"done: train {train_s:.0f}s, total {time.time() - t0:.0f}s, final loss {running:.4f}", flush=True)
    return json.loads((args.out / "config.json").read_text())["build"]


if __name__ == "__main__":
    main()
