"""Prefix key/value cache: the same batches of children evaluated with and without the parent's cache.

    python benchmarks/prefix_cache.py [--model NAME] [--children 64,128] [--tokens 16] [--iters 5]
                                      [--overheads 16] [--device cpu] [--threads N] [--wait-load 1.0]
                                      [--out benchmarks/prefix_cache.json]

Children are made as the dream loop makes them (the four operators in equal shares, from one fluent
parent, GCG from the parent's real gradient), so their shared prefixes have the loop's distribution.
Both evaluators see the same batches; the script prints ms per batch to the objective's layer (early
exit: the cascade's first stage and every no-XE dream) and through the head with XE, the largest score /
XE difference, the share of child tokens served from the cache, and the ratio (no cache / cache), last,
for each ``--children`` value; everything goes to ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from common import add_run_args, begin_run, end_run, machine_info, write_json  # noqa: E402
from throughput import candidate_batches, timed  # noqa: E402

from featuredream import DirectionObjective, SAEEncoder, load_model, load_sae  # noqa: E402
from featuredream.engine.children import banned_ids, make_children  # noqa: E402
from featuredream.engine.config import DreamConfig  # noqa: E402
from featuredream.evaluation.evaluate import Evaluator  # noqa: E402
from featuredream.evaluation.parent_grads import parent_signals  # noqa: E402
from featuredream.models.loading import text_config  # noqa: E402
from featuredream.models.padding import pad  # noqa: E402
from featuredream.models.sites import Site  # noqa: E402


def child_batches(model, tok, objective, n: int, length: int, n_batches: int, seed: int):
    """``n_batches`` of (parent ``[L]``, children ``ids [n, <= L+1]``, ``lengths [n]``), as the loop makes them."""
    dev = next(model.parameters()).device
    parent = candidate_batches(tok, 1, 1, length, seed)[0][0].to(dev)
    vocab = model.get_input_embeddings().weight.shape[0]
    banned = banned_ids(tok, vocab).to(dev)
    cfg = DreamConfig(n_children=n, min_tokens=2, max_tokens=length + 1)
    sig = parent_signals(model, objective, parent, 0.0)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        kids, _ = make_children(parent, sig, cfg, gen, banned, vocab)
        ids, mask = pad(kids, tok.pad_token_id or 0, device=dev)
        lengths = mask.sum(1)
        out.append((parent, ids, lengths))
    return out


def cached_try(ev, timing, ref, tokens: int, name: str, need_xe: bool, args) -> dict:
    """Print and return one prefix-cache try: its time, cached share and largest differences from no cache."""
    t, outs, per = timing
    share = ev.n_cached_tokens / (tokens * (1 + 1 / args.iters))
    ds = max(float((o.scores - r.scores).abs().max()) for o, r in zip(outs, ref))
    dx = max(float((o.xe - r.xe).abs().nan_to_num().max()) for o, r in zip(outs, ref)) if need_xe else None
    print(
        f"{'prefix cache, ' + name:34s} {ev.bucket_overhead:8.0f} {1e3 * t:9.1f} {100 * share:12.0f}% "
        f"{ds:12.1e} " + ("         -" if dx is None else f"{dx:10.1e}")
    )
    return dict(
        overhead=ev.bucket_overhead,
        ms=1e3 * t,
        ms_per_batch=[1e3 * x for x in per],
        cached_share=share,
        max_dscore=ds,
        max_dxe=dx,
    )


def measure_path(model, objective, n: int, need_xe: bool, overheads, batches, tokens: int, args, dev) -> dict:
    """The row for one path: no cache against the prefix cache at each overhead, interleaved batch by batch."""
    name = "with XE (full forward)" if need_xe else "no XE (early exit)"
    plain = Evaluator(model, objective, need_xe=need_xe, batch_size=n)
    cached = []
    for oh in overheads:
        ev = Evaluator(model, objective, need_xe=need_xe, batch_size=n, prefix_cache=True)
        if oh is not None:
            ev.bucket_overhead = oh
        cached.append(ev)
    fns = [lambda b, plain=plain: plain(b[1], b[2])]
    fns += [lambda b, ev=ev: ev(b[1], b[2], parent=b[0]) for ev in cached]
    (t_plain, ref, plain_s), *timings = timed(fns, batches, dev)  # interleaved batch by batch
    print(f"{'no cache, ' + name:34s} {'-':>8s} {1e3 * t_plain:9.1f}")
    tries = [cached_try(ev, timing, ref, tokens, name, need_xe, args) for ev, timing in zip(cached, timings)]
    best = min(tries, key=lambda r: r["ms"])
    return dict(
        children=n,
        path="xe" if need_xe else "early",
        ms_plain=1e3 * t_plain,
        ms_plain_per_batch=[1e3 * x for x in plain_s],
        ms_cache=best["ms"],
        ratio=t_plain * 1e3 / best["ms"],
        cached_share=best["cached_share"],
        max_dscore=best["max_dscore"],
        max_dxe=best["max_dxe"],
        overhead=best["overhead"],
        tokens_per_child=tokens / (n * args.iters),
        tries=tries,
    )


def measure(model, tok, objective, n: int, args, dev) -> list[dict]:
    """Rows for ``n`` children: per path (early exit / with XE), no cache vs prefix cache (per overhead)."""
    batches = child_batches(model, tok, objective, n, args.tokens, args.iters + 1, seed=0)

    tokens = sum(int(b[2].sum()) for b in batches[1:])
    print(
        f"{n} children of a {args.tokens}-token parent (gcg/swap/insert/delete in equal shares), "
        f"{tokens / (n * args.iters):.1f} tokens per child"
    )
    print(
        f"{'path':34s} {'overhead':>8s} {'ms/batch':>9s} {'cached tokens':>13s} {'max |dscore|':>12s} {'max |dXE|':>10s}"
    )
    overheads = [float(x) for x in args.overheads.split(",")] if args.overheads else [None]
    return [
        measure_path(model, objective, n, need_xe, overheads, batches, tokens, args, dev)
        for need_xe in (False, True)
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--children", default="64,128", help="children per batch, comma-separated")
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--overheads", default=None, help="comma-separated bucket overheads to try (tokens)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    add_run_args(ap, "prefix_cache")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    idle, monitor = begin_run(args)
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
    print(f"model {args.model or 'default'} on {dev}; objective {objective.name}")
    rows = []
    for n in [int(x) for x in args.children.split(",")]:
        rows += measure(model, tok, objective, n, args, dev)
    run = end_run(idle, monitor)
    write_json(
        args.out,
        {
            "args": vars(args),
            "machine": machine_info(dev, next(model.parameters()).dtype),
            **run,
            "objective": objective.name,
            "rows": rows,
        },
    )
    print(
        "ratio (no cache / prefix cache): "
        + "; ".join(f"{r['children']} children, {r['path']}: {r['ratio']:.2f}x" for r in rows)
    )


if __name__ == "__main__":
    main()
