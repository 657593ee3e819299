"""Multi-feature dreaming: per-feature cost at K = 1, 8, 32 features per run, same per-feature quality.

    python benchmarks/multi_feature.py [--ks 1,8,32] [--iters 10] [--n-children 32] [--xe-max 6.67]
                                       [--threads N] [--device cpu] [--single] [--start auto]
                                       [--no-prefix-cache]

A fixed-seed sample of live latents of the default SAE (seed 0) is dreamed K at a time with
:func:`featuredream.multi.dream_many` for each K, all features with the same config and seed, a fixed
number of iterations (no patience, no time budget, so every feature does the same work at every K).
Per-feature cost is the loop's wall time / (K x iterations); the start pools (scored in one batch) and
the reference verification are reported separately, per feature. Quality: the median dreamed /
dataset-max ratio, and whether the features shared between two K (the first K of the sample) reached
the same best prompt (they should: a K-feature run equals K single runs up to float rounding).
``--single`` also times :func:`featuredream.dream` on the first feature (the single-feature path, with
its own evaluator options such as the prefix cache when the installed version has it). The ratio of the
largest K to K = 1 is printed last.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from common import live_sample  # noqa: E402

from featuredream import DreamConfig, load_model, load_sae  # noqa: E402
from featuredream.engine.multi import dream_many  # noqa: E402
from featuredream.engine.multi_objective import MultiLatentObjective  # noqa: E402
from featuredream.engine.objectives import SAEEncoder  # noqa: E402
from featuredream.engine.optimizer import dream  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ks", default="1,8,32", help="features per run, comma-separated")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--n-children", type=int, default=None, help="default: DreamConfig's (32 on CPU)")
    ap.add_argument("--xe-max", type=float, default=6.67, help="fluency ceiling (p90 of corpus windows)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--single", action="store_true", help="also time dream() on the first feature")
    ap.add_argument("--start", default="auto", help="DreamConfig.start (smoke runs: prompt)")
    ap.add_argument("--no-prefix-cache", action="store_true", help="plain evaluator (no KV cache)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ks = [int(k) for k in args.ks.split(",")]
    model, tok = load_model(None, device=args.device)
    sae = load_sae("default", model=model)
    feats = live_sample(sae, max(ks), seed=0)
    cfg = DreamConfig(
        iters=args.iters,
        patience=None,
        progress=False,
        xe_max=args.xe_max,
        n_children=args.n_children,
        start=args.start,
        init_prompt="The old lighthouse keeper climbed the spiral stairs every evening"
        if args.start == "prompt"
        else None,
        prefix_cache=not args.no_prefix_cache,
    )
    dev = next(model.parameters()).device
    print(
        f"default model on {dev} ({torch.get_num_threads()} threads), SAE {sae.name}; {args.iters} iterations, "
        f"xe_max {args.xe_max}, n_children {cfg.n_children or ('128' if dev.type == 'cuda' else '32')}, "
        f"start {cfg.start}, prefix cache {cfg.prefix_cache}; "
        f"features {feats[: max(ks)]}"
    )
    rows, best = [], {}
    for k in ks:
        obj = MultiLatentObjective(sae, feats[:k])
        t0 = time.perf_counter()
        res = dream_many(model, tok, obj, cfg)
        total = time.perf_counter() - t0
        loop = res[0].environment["multi"]["loop_seconds"]
        iters = len(res[0].history)
        per_it = loop / (k * iters)
        ratios = [r.ratio for r in res if r.ratio is not None]
        best[k] = {r.feature: r.best.text for r in res}
        rows.append((k, per_it, (total - loop) / k, total / k, statistics.median(ratios), res))
        print(
            f"K={k:3d}: {per_it:7.3f} s/iter per feature (loop {loop:.1f} s), starts+verify "
            f"{(total - loop) / k:6.2f} s per feature, total {total / k:7.2f} s per feature, "
            f"median ratio {statistics.median(ratios):.2f}",
            flush=True,
        )
    single = None
    if args.single:
        t0 = time.perf_counter()
        r = dream(model, tok, SAEEncoder(sae, feats[0]), cfg)
        total = time.perf_counter() - t0
        single = sum(h["seconds"] for h in r.history) / len(r.history)
        same = r.best.text == best[ks[0]][feats[0]]
        print(
            f"dream() on feature {feats[0]}: {single:.3f} s/iter, total {total:.2f} s, ratio {r.ratio:.2f}; "
            f"same best prompt as K={ks[0]}: {same}"
        )
    print(f"{'K':>4} {'s/iter/feature':>15} {'s/feature (all)':>16} {'median ratio':>13}")
    for k, per_it, _, tot, med, _ in rows:
        print(f"{k:4d} {per_it:15.3f} {tot:16.2f} {med:13.2f}")
    for a, b in zip(ks, ks[1:]):
        shared = [f for f in feats[:a]]
        same = sum(best[a][f] == best[b][f] for f in shared)
        print(f"same best prompt at K={a} and K={b}: {same}/{len(shared)} shared features")
    k1, kn = rows[0], rows[-1]
    msg = f"ratio per-feature s/iter K={kn[0]} / K={k1[0]}: {kn[1] / k1[1]:.2f} (target <= 0.5)"
    if single:
        msg += f"; K={kn[0]} / dream(): {kn[1] / single:.2f}"
    print(msg)


if __name__ == "__main__":
    main()
