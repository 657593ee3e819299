"""Multi-feature dreaming: per-feature cost at K = 1, 8, 32 features per run, same per-feature quality.

    python benchmarks/multi_feature.py [--ks 1,8,32] [--iters 10] [--n-children N] [--xe-max 6.67]
                                       [--threads N] [--device cpu] [--single] [--start auto]
                                       [--no-prefix-cache] [--wait-load 1.0]
                                       [--out benchmarks/multi_feature.json]

A fixed-seed sample of live latents of the default SAE (seed 0) is dreamed K at a time with
:func:`featuredream.dream_many` for each K, all features with the same config and seed, a fixed number of
iterations (no patience, no time budget, so every feature does the same work at every K). Per-feature
cost is the loop's wall time / (K x iterations); the start pools (scored in one batch) and the reference
verification are reported separately, per feature. Quality: the median dreamed / dataset-max ratio, and
whether the features shared between two K (the first K of the sample) reached the same best prompt (they
should: a K-feature run equals K single runs up to float rounding). ``--single`` also times
:func:`featuredream.dream` on the first feature (K = 1 through the single-feature front door). The ratio
of the largest K to K = 1 is printed last; everything goes to ``--out``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import add_run_args, begin_run, end_run, live_sample, machine_info, write_json  # noqa: E402

from featuredream import DreamConfig, load_model, load_sae  # noqa: E402
from featuredream.engine.config import default_children  # noqa: E402
from featuredream.engine.dream import dream, dream_many  # noqa: E402
from featuredream.objectives.group import MultiLatentObjective  # noqa: E402
from featuredream.objectives.kinds import SAEEncoder  # noqa: E402


def parse_args() -> argparse.Namespace:
    """The command-line options."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--ks", default="1,8,32", help="features per run, comma-separated")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--n-children", type=int, default=None, help="default: DreamConfig's (64 on CPU)")
    ap.add_argument("--xe-max", type=float, default=6.67, help="fluency ceiling (p90 of corpus windows)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--single", action="store_true", help="also time dream() on the first feature")
    ap.add_argument("--start", default="auto", help="DreamConfig.start (smoke runs: prompt)")
    ap.add_argument("--no-prefix-cache", action="store_true", help="plain evaluator (no KV cache)")
    add_run_args(ap, "multi_feature")
    return ap.parse_args()


def make_config(args) -> DreamConfig:
    """The config every run uses: fixed iterations, no patience, no time budget."""
    return DreamConfig(
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


def warm_up(model, tok, sae, feats: list[int], cfg: DreamConfig) -> None:
    """Untimed one-iteration run on the first feature, so the first timed K does not pay first-call costs."""
    dream_many(
        model,
        tok,
        MultiLatentObjective(sae, feats[:1]),
        replace(
            cfg,
            iters=1,
            start="prompt",
            init_prompt="The old lighthouse keeper climbed the spiral stairs every evening",
        ),
    )


def run_k(model, tok, sae, feats: list[int], k: int, cfg: DreamConfig) -> tuple[dict, dict]:
    """Dream the first ``k`` features in one run and print its cost: ``(row, best text per feature)``."""
    obj = MultiLatentObjective(sae, feats[:k])
    t0 = time.perf_counter()
    res = dream_many(model, tok, obj, cfg)
    total = time.perf_counter() - t0
    loop = res[0].environment.multi.loop_seconds
    iters = len(res[0].history)
    per_it = loop / (k * iters)
    ratios = [r.ratio for r in res if r.ratio is not None]
    best = {r.feature: r.best.text for r in res}
    row = dict(
        k=k,
        iterations=iters,
        loop_seconds=loop,
        total_seconds=total,
        s_per_iter_per_feature=per_it,
        start_verify_per_feature=(total - loop) / k,
        all_in_per_feature=total / k,
        median_ratio=statistics.median(ratios) if ratios else None,
        features=feats[:k],
        best_text={str(r.feature): r.best.text for r in res},
        best_activation={str(r.feature): r.best.activation for r in res},
    )
    print(
        f"K={k:3d}: {per_it:7.3f} s/iter per feature (loop {loop:.1f} s), starts+verify "
        f"{(total - loop) / k:6.2f} s per feature, total {total / k:7.2f} s per feature, "
        f"median ratio {row['median_ratio']:.2f}",
        flush=True,
    )
    return row, best


def run_single(model, tok, sae, feats: list[int], cfg: DreamConfig, first_best: dict, k0: int) -> dict:
    """Time :func:`dream` on the first feature and compare its best prompt with the first K's."""
    t0 = time.perf_counter()
    r = dream(model, tok, SAEEncoder(sae, feats[0]), cfg)
    total = time.perf_counter() - t0
    per_it = sum(h.seconds for h in r.history) / len(r.history)
    same = r.best.text == first_best[feats[0]]
    single = dict(
        feature=feats[0],
        s_per_iter=per_it,
        total_seconds=total,
        ratio=r.ratio,
        best_text=r.best.text,
        same_best_as_first_k=same,
    )
    print(
        f"dream() on feature {feats[0]}: {per_it:.3f} s/iter, total {total:.2f} s, ratio {r.ratio:.2f}; "
        f"same best prompt as K={k0}: {same}"
    )
    return single


def print_rows(rows: list[dict]) -> None:
    """Print the per-K table."""
    print(f"{'K':>4} {'s/iter/feature':>15} {'s/feature (all)':>16} {'median ratio':>13}")
    for row in rows:
        print(
            f"{row['k']:4d} {row['s_per_iter_per_feature']:15.3f} {row['all_in_per_feature']:16.2f} "
            f"{row['median_ratio']:13.2f}"
        )


def compare_shared(ks: list[int], best: dict, feats: list[int]) -> list[dict]:
    """Print and return, for consecutive K, how many shared features reached the same best prompt."""
    shared_same = []
    for a, b in zip(ks, ks[1:]):
        same = sum(best[a][f] == best[b][f] for f in feats[:a])
        shared_same.append(dict(k_small=a, k_large=b, same=same, shared=a))
        print(f"same best prompt at K={a} and K={b}: {same}/{a} shared features")
    return shared_same


def main() -> None:
    """Dream the sample at each K (and with ``dream()`` if asked), print the costs and write the JSON."""
    args = parse_args()
    idle, monitor = begin_run(args)
    ks = [int(k) for k in args.ks.split(",")]
    model, tok = load_model(None, device=args.device)
    sae = load_sae("default", model=model)
    feats = live_sample(sae, max(ks), seed=0)
    cfg = make_config(args)
    dev = next(model.parameters()).device
    n_children = cfg.n_children or default_children(dev.type)
    print(
        f"default model on {dev} ({machine_info(dev)['torch_threads']} threads), SAE {sae.name}; "
        f"{args.iters} iterations, xe_max {args.xe_max}, n_children {n_children}, start {cfg.start}, "
        f"prefix cache {cfg.prefix_cache}; features {feats[: max(ks)]}"
    )
    warm_up(model, tok, sae, feats, cfg)
    rows, best = [], {}
    for k in ks:
        row, best[k] = run_k(model, tok, sae, feats, k, cfg)
        rows.append(row)
    single = run_single(model, tok, sae, feats, cfg, best[ks[0]], ks[0]) if args.single else None
    print_rows(rows)
    shared_same = compare_shared(ks, best, feats)
    k1, kn = rows[0], rows[-1]
    ratio = kn["s_per_iter_per_feature"] / k1["s_per_iter_per_feature"]
    ratio_all = kn["all_in_per_feature"] / k1["all_in_per_feature"]
    msg = f"ratio per-feature s/iter K={kn['k']} / K={k1['k']}: {ratio:.2f} (all-in {ratio_all:.2f}; target <= 0.5)"
    if single:
        msg += f"; K={kn['k']} / dream(): {kn['s_per_iter_per_feature'] / single['s_per_iter']:.2f}"
    run = end_run(idle, monitor)
    write_json(
        args.out,
        {
            "args": vars(args),
            "machine": machine_info(dev, next(model.parameters()).dtype),
            **run,
            "n_children": n_children,
            "features": feats[: max(ks)],
            "rows": rows,
            "single": single,
            "shared_same": shared_same,
            "ratio_per_iter": ratio,
            "ratio_all_in": ratio_all,
        },
    )
    print(msg)


if __name__ == "__main__":
    main()
