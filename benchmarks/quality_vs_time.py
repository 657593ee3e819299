"""Activation reached vs wall time: the optimized and the plain dream on the same features.

    python benchmarks/quality_vs_time.py [--n-latents 8] [--budget 60] [--step 10] [--seed 0]
        [--xe-max p90|NUMBER] [--threads N] [--wait-load 1.0] [--out benchmarks/quality_vs_time.json]
        [--plot benchmarks/quality_vs_time.png]

Features: the fixed-seed sample of live latents of the default SAE that benchmarks/quality.py uses.
Each is dreamed twice for the same wall budget, same seed, same start and ``xe_max``:

* optimized: the default ``DreamConfig`` (cascade: children scored to the objective's layer and finished
  through the head only when they could enter the buffer; prefix key/value cache);
* plain: ``cascade=False, prefix_cache=False``: the full forward pass with XE for every child.

Both read ``DreamResult.history`` (``elapsed`` seconds since the dream started and ``best_activation``,
the fast-path activation of the buffer's best prompt). Prints the median activation and median ratio to
the dataset maximum at t = step, 2 step, ... for both, saves a JSON and a PNG plot, and prints last the
median activation at the full budget of optimized minus plain (the target: > 0).
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import add_run_args, begin_run, corpus_xe_quantile, end_run, live_sample, machine_info, write_json  # noqa: E402

from featuredream import DreamConfig, SAEEncoder, dream, load_model, load_sae  # noqa: E402

CONFIGS = {"optimized": {}, "plain": {"cascade": False, "prefix_cache": False}}


def curve(history: list[dict]) -> list[tuple[float, float]]:
    """``(elapsed seconds, best activation)`` per iteration (cumulative ``seconds`` for old results)."""
    out, t = [], 0.0
    for row in history:
        t += row["seconds"]
        out.append((row.elapsed, row.best_activation))
    return out


def value_at(points: list[tuple[float, float]], t: float) -> float:
    """The best activation reached by time ``t`` (NaN before the first iteration ended)."""
    seen = [a for s, a in points if s <= t]
    return seen[-1] if seen else math.nan


def fmt(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.3f}"


def median(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.median(xs) if xs else math.nan


def plot(rows: list[dict], times: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, color in zip(CONFIGS, ("tab:blue", "tab:gray")):
        runs = [r for r in rows if r["config"] == name]
        for r in runs:
            xs, ys = zip(*r["curve"]) if r["curve"] else ((), ())
            ax.plot(xs, [y / r["dataset_max"] for y in ys], color=color, alpha=0.25, lw=0.8)
        med = [median([value_at(r["curve"], t) / r["dataset_max"] for r in runs]) for t in times]
        ax.plot(times, med, color=color, lw=2.5, marker="o", label=f"{name} (median)")
    ax.axhline(1.0, color="k", ls=":", lw=0.8)
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("best activation / dataset max")
    ax.set_title("Activation reached vs wall time (same features, same budget)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args() -> argparse.Namespace:
    """The command-line options."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-latents", type=int, default=8)
    ap.add_argument("--budget", type=float, default=60.0, help="wall seconds per latent and configuration")
    ap.add_argument("--step", type=float, default=10.0, help="table rows every STEP seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--xe-max", default="p90", help="p90 (of 16-token corpus windows) or a number")
    ap.add_argument("--start", default="auto")
    ap.add_argument("--plot", default="benchmarks/quality_vs_time.png")
    add_run_args(ap, "quality_vs_time")
    return ap.parse_args()


def result_row(name: str, lat: int, r) -> dict:
    """The JSON row of one dream: final prompt, counts, start phase and its activation curve."""
    pts = curve(r.history)
    return dict(
        config=name,
        latent=lat,
        dataset_max=r.dataset_max or 1.0,
        final_activation=r.best.activation,
        final_xe=r.best.xe,
        feasible=r.feasible,
        iters=len(r.history),
        candidates=r.n_evaluated,
        start_seconds=(pts[0][0] - r.history[0]["seconds"]) if pts else None,
        curve=pts,
    )


def dream_all(model, tok, sae, latents: list[int], xe_max: float, args) -> list[dict]:
    """Dream each latent under each configuration for the same budget; a row per dream."""
    rows = []
    for lat in latents:
        obj = SAEEncoder(sae, lat)
        for name, over in CONFIGS.items():
            cfg = DreamConfig(
                iters=1_000_000,
                time_budget=args.budget,
                xe_max=xe_max,
                seed=args.seed,
                start=args.start,
                progress=False,
                patience=None,
                **over,
            )
            r = dream(model, tok, obj, cfg)
            rows.append(result_row(name, lat, r))
            print(
                f"{lat:5d} {name:9s} act {r.best.activation:8.3f} XE {r.best.xe:5.2f} "
                f"{'ok ' if r.feasible else 'INF'} it {len(r.history):4d} cand {r.n_evaluated:6d}",
                flush=True,
            )
    return rows


def time_table(rows: list[dict], times: list[float]) -> list[dict]:
    """Print and return the median activation and ratio of each configuration at each time."""
    table = []
    print(
        "\n| t (s) | optimized: median act | plain: median act | optimized: median ratio | plain: median ratio |"
    )
    print("|---:|---:|---:|---:|---:|")
    for t in times:
        line = {"t": t}
        for name in CONFIGS:
            runs = [r for r in rows if r["config"] == name]
            line[f"{name}_act"] = median([value_at(r["curve"], t) for r in runs])
            line[f"{name}_ratio"] = median([value_at(r["curve"], t) / r["dataset_max"] for r in runs])
        table.append(line)
        cells = [line[f"{n}_{k}"] for k in ("act", "ratio") for n in CONFIGS]
        print(f"| {t:g} | " + " | ".join(fmt(c) for c in cells) + " |")
    return table


def final_higher(rows: list[dict]) -> int:
    """How many latents the optimized dream ended higher on than the plain one."""
    return sum(
        a["final_activation"] > b["final_activation"]
        for a in rows
        if a["config"] == "optimized"
        for b in rows
        if b["config"] == "plain" and b["latent"] == a["latent"]
    )


def main() -> None:
    """Dream the sample under both configurations, print the table, write the JSON and the plot."""
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    idle, monitor = begin_run(args)
    model, tok = load_model(None, device="cpu")
    sae = load_sae("default", model=model)
    xe_max = corpus_xe_quantile(model, tok, length=16) if args.xe_max == "p90" else float(args.xe_max)
    latents = live_sample(sae, args.n_latents, args.seed)
    print(f"xe_max {xe_max:.3f} ({args.xe_max}); latents {latents}; {args.budget:g} s each", flush=True)
    rows = dream_all(model, tok, sae, latents, xe_max, args)
    times = [args.step * k for k in range(1, int(args.budget // args.step) + 1)] or [args.budget]
    table = time_table(rows, times)
    iters = {n: median([r["iters"] for r in rows if r["config"] == n]) for n in CONFIGS}
    start = median([r["start_seconds"] for r in rows if r["start_seconds"] is not None])
    print(
        f"median iterations: optimized {iters['optimized']:g}, plain {iters['plain']:g}; median start phase "
        f"{start:.1f} s ('-': no iteration finished yet)"
    )
    run = end_run(idle, monitor)
    write_json(
        args.out,
        {
            "args": vars(args),
            "machine": machine_info("cpu", next(model.parameters()).dtype),
            **run,
            "config": {k: str(v) for k, v in vars(DreamConfig()).items()},
            "xe_max": xe_max,
            "latents": latents,
            "rows": rows,
            "table": table,
            "median_iterations": iters,
            "median_start_seconds": start,
            "final_median_act_diff": table[-1]["optimized_act"] - table[-1]["plain_act"],
            "final_higher": final_higher(rows),
        },
    )
    plot(rows, times, Path(args.plot))
    last = table[-1]
    print(
        f"at t = {last['t']:g} s: median activation optimized - plain = "
        f"{last['optimized_act'] - last['plain_act']:+.3f} "
        f"(optimized {fmt(last['optimized_act'])}, plain {fmt(last['plain_act'])}); wrote {args.out}, {args.plot}"
    )


if __name__ == "__main__":
    main()
