"""Before/after of one optimizer change at a time, on the tuning latents (``common.tune_latents``, which
benchmarks/quality.py never reports on).

    python benchmarks/tune.py --budget 30 --variants 'base={}' 'fluent={"gcg_fluency": 1.0}' \
        --out benchmarks/tune_gcg_fluency.json

Each variant is a JSON dict of ``DreamConfig`` overrides on top of ``--xe-max p90``, same seed, same
wall budget per latent. Prints per-variant the share of latents with a feasible ratio >= 1, the median and
mean ratio (infeasible = 0), the median XE and length, and writes every run to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import tune_latents  # noqa: E402

from featuredream import DreamConfig, dream, load_model, load_sae  # noqa: E402
from featuredream.engine.dream import judge_results  # noqa: E402
from featuredream.engine.objectives import make_objective  # noqa: E402
from featuredream.lm.judge import FluencyJudge  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sae", default="default")
    ap.add_argument("--budget", type=float, default=30.0)
    ap.add_argument("--n-latents", type=int, default=8)
    ap.add_argument("--xe-max", default="p90")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", nargs="+", required=True, help="NAME=JSON overrides")
    ap.add_argument("--judge", default="default", help="fluency judge (none: skip)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    model, tok = load_model(None, device="cpu")
    sae = load_sae(args.sae, model=model)
    latents = tune_latents(sae, args.n_latents)
    judge = None if args.judge == "none" else FluencyJudge.load(args.judge)
    rows, summary = [], {}
    for spec in args.variants:
        name, kw = spec.split("=", 1)
        kw = json.loads(kw)
        for lat in latents:
            cfg = DreamConfig(
                iters=1_000_000,
                time_budget=args.budget,
                xe_max=args.xe_max,
                seed=args.seed,
                progress=False,
                patience=None,
                **kw,
            )
            r = dream(model, tok, make_objective(sae, lat), cfg)
            judge_results([r], judge)
            ratio = r.ratio if r.feasible else 0.0
            pct = r.judge["percentile"] if r.judge else float("nan")
            rows.append(
                dict(
                    variant=name,
                    latent=lat,
                    ratio=ratio,
                    xe=r.best.xe,
                    xe_limit=r.xe_limit,
                    tokens=len(r.best.ids),
                    iters=len(r.history),
                    start=r.start,
                    text=r.best.text,
                    judge_pct=pct,
                )
            )
            print(
                f"{name:12s} {lat:5d} ratio {ratio:5.2f} XE {r.best.xe:5.2f}/{r.xe_limit:5.2f} "
                f"L {len(r.best.ids):2d} it {len(r.history):3d} judge {pct:3.0f} {r.start:8s} {r.best.text!r}",
                flush=True,
            )
        rs = [r["ratio"] for r in rows if r["variant"] == name]
        summary[name] = dict(
            overrides=kw,
            wins=sum(x >= 1 for x in rs),
            n=len(rs),
            median_ratio=statistics.median(rs),
            mean_ratio=statistics.mean(rs),
            median_xe=statistics.median(r["xe"] for r in rows if r["variant"] == name),
            median_tokens=statistics.median(r["tokens"] for r in rows if r["variant"] == name),
            median_judge_pct=statistics.median(r["judge_pct"] for r in rows if r["variant"] == name),
        )
        Path(args.out).write_text(
            json.dumps(dict(args=vars(args), latents=latents, summary=summary, rows=rows), indent=1)
        )  # after each variant: a killed run keeps what it measured
        s = summary[name]
        print(
            f"== {name}: {s['wins']}/{s['n']} >= 1, median {s['median_ratio']:.3f}, mean {s['mean_ratio']:.3f}, "
            f"judge median {s['median_judge_pct']:.0f}"
        )
    Path(args.out).write_text(
        json.dumps(dict(args=vars(args), latents=latents, summary=summary, rows=rows), indent=1)
    )


if __name__ == "__main__":
    main()
