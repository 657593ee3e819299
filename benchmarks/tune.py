"""Before/after of one optimizer change at a time, on the tuning latents (``common.tune_latents``, which
benchmarks/quality.py never reports on).

    python benchmarks/tune.py --budget 30 --variants 'max={"goal": "max"}' 'readable={}' \
        --out benchmarks/tune_readable_goal.json

Each variant is a JSON dict of ``DreamConfig`` overrides on top of the CLI's defaults (``--xe-max p90``, the
readable goal with its floor at the dataset maximum), same seed, same wall budget per latent. Per variant it
prints the share of latents whose headline reaches the dataset maximum (feasible), the share whose headline
**dominates** the latent's best dataset example (reaches the maximum and the judge, never used in the
search, finds it at least as natural: ``common.dominance``), the median ratio, the judge's median
percentile, and writes every run to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import dominance, tune_latents  # noqa: E402

from featuredream import DreamConfig, dream, load_model, load_sae  # noqa: E402
from featuredream.engine.dream import judge_results  # noqa: E402
from featuredream.objectives.kinds import make_objective  # noqa: E402
from featuredream.text.judge import FluencyJudge  # noqa: E402


def run_one(model, tok, sae, judge, lat: int, name: str, kw: dict, args) -> dict:
    """One latent under one variant: the dream, its judge figures and its row."""
    cfg = DreamConfig(
        **{
            "iters": 1_000_000,
            "time_budget": args.budget,
            "xe_max": args.xe_max,
            "seed": args.seed,
            "progress": False,
            "patience": None,
            **kw,
        }
    )
    r = dream(model, tok, make_objective(sae, lat), cfg)
    judge_results([r], judge)
    ratio = r.ratio if r.feasible else 0.0
    row = dict(
        variant=name, latent=lat, ratio=ratio, xe=r.best.xe, xe_limit=r.xe_limit, tokens=len(r.best.ids)
    )
    row |= dict(iters=len(r.history), start=r.start, text=r.best.text, headline=r.headline)
    row |= dict(most_activating_ratio=r.ratio_of(r.most_activating))
    row |= dominance(judge, sae, tok, lat, r)
    print(
        f"{name:12s} {lat:5d} ratio {ratio:5.2f} (max {row['most_activating_ratio']:5.2f}) XE {r.best.xe:5.2f} "
        f"L {len(r.best.ids):2d} it {len(r.history):3d} judge {row['judge_pct']:3.0f} (data "
        f"{row['dataset_judge_pct']:3.0f}) {'DOM' if row['dominates'] else '   '} {r.best.text!r}",
        flush=True,
    )
    return row


def summarize(rows: list[dict], kw: dict) -> dict:
    return dict(
        overrides=kw,
        n=len(rows),
        beat=sum(r["ratio"] >= 1 for r in rows),
        dominate=sum(r["dominates"] for r in rows),
        median_ratio=statistics.median(r["ratio"] for r in rows),
        median_judge_pct=statistics.median(r["judge_pct"] for r in rows),
        median_dataset_judge_pct=statistics.median(r["dataset_judge_pct"] for r in rows),
        median_tokens=statistics.median(r["tokens"] for r in rows),
        median_iters=statistics.median(r["iters"] for r in rows),
        dominating_dreams=sum(r["dominating_dreams"] for r in rows),
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sae", default="default")
    ap.add_argument("--budget", type=float, default=30.0)
    ap.add_argument("--n-latents", type=int, default=8)
    ap.add_argument("--xe-max", default="p90")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", nargs="+", required=True, help="NAME=JSON overrides")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    model, tok = load_model(None, device="cpu")
    sae = load_sae(args.sae, model=model)
    latents = tune_latents(sae, args.n_latents)
    judge = FluencyJudge.load("default")
    rows, summary = [], {}
    for spec in args.variants:
        name, kw = spec.split("=", 1)
        kw = json.loads(kw)
        rows += [run_one(model, tok, sae, judge, lat, name, kw, args) for lat in latents]
        summary[name] = s = summarize([r for r in rows if r["variant"] == name], kw)
        out = dict(
            args=vars(args), latents=latents, summary=summary, rows=rows, torch_threads=torch_threads()
        )
        Path(args.out).write_text(json.dumps(out, indent=1))  # after each variant: a killed run keeps it
        print(
            f"== {name}: beat {s['beat']}/{s['n']}, dominate {s['dominate']}/{s['n']}, median ratio "
            f"{s['median_ratio']:.3f}, judge median {s['median_judge_pct']:.0f} (dataset "
            f"{s['median_dataset_judge_pct']:.0f}), {s['median_iters']} iterations",
            flush=True,
        )


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
