"""Prefix key/value cache: the same batches of children evaluated with and without the parent's cache.

    python benchmarks/prefix_cache.py [--model NAME] [--children 32] [--tokens 16] [--iters 5]
                                      [--overheads 16] [--device cpu] [--threads N]

Children are made as the dream loop makes them (the four operators in equal shares, from one fluent
parent, GCG from the parent's real gradient), so their shared prefixes have the loop's distribution.
Both evaluators see the same batches; the script prints ms per batch to the objective's layer (early
exit: the cascade's first stage and every no-XE dream) and through the head with XE, the largest score /
XE difference, the share of child tokens served from the cache, and the ratio (no cache / cache), last.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from throughput import candidate_batches  # noqa: E402

from featuredream import DirectionObjective, SAEEncoder, load_model, load_sae  # noqa: E402
from featuredream.engine.config import DreamConfig  # noqa: E402
from featuredream.engine.evaluate import Evaluator, pad_right  # noqa: E402
from featuredream.lm.models import text_config  # noqa: E402
from featuredream.engine.mutations import parent_signals  # noqa: E402
from featuredream.engine.optimizer import _banned_ids, _make_children  # noqa: E402
from featuredream.lm.sites import Site  # noqa: E402


def child_batches(model, tok, objective, n: int, length: int, n_batches: int, seed: int):
    """``n_batches`` of (parent ``[L]``, children ``ids [n, <= L+1]``, ``lengths [n]``), as the loop makes them."""
    dev = next(model.parameters()).device
    parent = candidate_batches(tok, 1, 1, length, seed)[0][0].to(dev)
    vocab = model.get_input_embeddings().weight.shape[0]
    banned = _banned_ids(tok, vocab).to(dev)
    cfg = DreamConfig(n_children=n, min_tokens=2, max_tokens=length + 1)
    sig = parent_signals(model, objective, parent, 0.0)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        kids, _ = _make_children(parent, sig, cfg, gen, banned, vocab)
        ids, lengths = pad_right(kids, tok.pad_token_id or 0, dev)
        out.append((parent, ids, lengths))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--children", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--overheads", default=None, help="comma-separated bucket overheads to try (tokens)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 when the CPU is shared)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model(args.model, device=args.device, dtype=args.dtype)
    dev = next(model.parameters()).device
    if args.model is None:
        sae = load_sae("default", model=model)
        objective = SAEEncoder(sae, int(sae.stats.live_latents()[0]))
    else:
        cfg = text_config(model)
        objective = DirectionObjective(
            Site("resid_post", cfg.num_hidden_layers // 2),
            torch.randn(cfg.hidden_size, generator=torch.Generator().manual_seed(0)),
        )
    batches = child_batches(model, tok, objective, args.children, args.tokens, args.iters + 1, seed=0)

    def timed(ev: Evaluator, use_parent: bool):
        run = (lambda b: ev(b[1], b[2], parent=b[0])) if use_parent else (lambda b: ev(b[1], b[2]))
        run(batches[0])  # warm-up
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        outs = [run(b) for b in batches[1:]]
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t) / args.iters, outs

    tokens = sum(int(b[2].sum()) for b in batches[1:])
    print(
        f"model {args.model or 'default'} on {dev}; {args.children} children of a {args.tokens}-token parent "
        f"(gcg/swap/insert/delete in equal shares); objective {objective.name}"
    )
    print(
        f"{'path':34s} {'overhead':>8s} {'ms/batch':>9s} {'cached tokens':>13s} {'max |dscore|':>12s} {'max |dXE|':>10s}"
    )
    ratios = {}
    for need_xe in (False, True):
        name = "with XE (full forward)" if need_xe else "no XE (early exit)"
        plain = Evaluator(model, objective, need_xe=need_xe, batch_size=args.children)
        t_plain, ref = timed(plain, False)
        print(f"{'no cache, ' + name:34s} {'-':>8s} {1e3 * t_plain:9.1f}")
        best = None
        for oh in [float(x) for x in args.overheads.split(",")] if args.overheads else [None]:
            ev = Evaluator(model, objective, need_xe=need_xe, batch_size=args.children, prefix_cache=True)
            if oh is not None:
                ev.bucket_overhead = oh
            t, outs = timed(ev, True)
            share = ev.n_cached_tokens / (tokens * (1 + 1 / args.iters))
            ds = max(float((o.scores - r.scores).abs().max()) for o, r in zip(outs, ref))
            dx = max(float((o.xe - r.xe).abs().nan_to_num().max()) for o, r in zip(outs, ref))
            print(
                f"{'prefix cache, ' + name:34s} {ev.bucket_overhead:8.0f} {1e3 * t:9.1f} {100 * share:12.0f}% "
                f"{ds:12.1e} {dx:10.1e}"
            )
            best = t if best is None else min(best, t)
        ratios[name] = t_plain / best
    print("ratio (no cache / prefix cache): " + "; ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
