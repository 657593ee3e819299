"""Quality benchmark: dreamed activation / dataset maximum, per latent, at a fixed wall budget.

    python benchmarks/quality.py [--sae default] [--n-latents 20] [--budget 60] [--seed 0] [--out benchmarks/quality.json]
    python benchmarks/quality.py --sae smollm2-q18h6 --out benchmarks/quality_query.json   # query latents

For a fixed-seed sample of live latents of a shipped SAE (residual or one head's queries), dream each latent for the same wall budget
under two fluency settings: a loose ``xe_max`` and one equal to the 90th percentile XE of the corpus' own
16-token windows. Prints per-latent rows, then the fraction of latents with ratio >= 1 per setting.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import corpus_xe_quantile, live_sample  # noqa: E402

from featuredream import DreamConfig, dream, load_model, load_sae  # noqa: E402
from featuredream.objectives import make_objective  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sae", default="default", help="shipped SAE with statistics (default, smollm2-q18h6)")
    ap.add_argument("--n-latents", type=int, default=20)
    ap.add_argument("--budget", type=float, default=60.0, help="wall seconds per latent and setting")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--loose-xe", type=float, default=10.0)
    ap.add_argument("--settings", default="loose,p90")
    ap.add_argument("--start", default="auto", help="auto (warm, default) or samples (cold)")
    ap.add_argument("--out", default="benchmarks/quality.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(args.seed)
    model, tok = load_model(None, device="cpu")
    sae = load_sae(args.sae, model=model)
    p90 = corpus_xe_quantile(model, tok, length=16)
    xe_of = {"loose": args.loose_xe, "p90": p90}
    latents = live_sample(sae, args.n_latents, args.seed)
    print(f"SAE {sae.name} at {sae.site}; p90 XE of 16-token corpus windows: {p90:.3f}; latents: {latents}")
    rows = []
    for setting in args.settings.split(","):
        for lat in latents:
            obj = make_objective(sae, lat)  # a QueryFeature for a one-head query SAE
            cfg = DreamConfig(
                iters=100_000,
                time_budget=args.budget,
                xe_max=xe_of[setting],
                seed=args.seed,
                start=args.start,
                progress=False,
                patience=None,
            )
            r = dream(model, tok, obj, cfg)
            row = dict(
                sae=sae.name,
                setting=setting,
                latent=lat,
                activation=r.best.activation,
                dataset_max=r.dataset_max,
                ratio=r.ratio,
                xe=r.best.xe,
                feasible=r.feasible,
                start=r.start,
                iters=len(r.history),
                candidates=r.n_evaluated,
                text=r.best.text,
            )
            rows.append(row)
            print(
                f"{setting:5s} {lat:5d} act {r.best.activation:8.3f} / max {r.dataset_max:8.3f} = {r.ratio:5.2f}  "
                f"XE {r.best.xe:5.2f} {'ok ' if r.feasible else 'INF'} it {len(r.history):3d}  {r.best.text!r}",
                flush=True,
            )
    summary = {}
    for setting in args.settings.split(","):
        rs = [r for r in rows if r["setting"] == setting]
        wins = [r for r in rs if r["feasible"] and r["ratio"] is not None and r["ratio"] >= 1]
        summary[setting] = dict(
            xe_max=xe_of[setting],
            n=len(rs),
            frac_ratio_ge_1=len(wins) / len(rs),
            median_ratio=statistics.median(r["ratio"] for r in rs),
            median_xe=statistics.median(r["xe"] for r in rs),
        )
        s = summary[setting]
        print(
            f"{setting}: xe_max {s['xe_max']:.2f}: ratio >= 1 (feasible) for {len(wins)}/{len(rs)} = "
            f"{100 * s['frac_ratio_ge_1']:.0f}% of latents; median ratio {s['median_ratio']:.2f}, "
            f"median XE {s['median_xe']:.2f}"
        )
    Path(args.out).write_text(
        json.dumps({"args": vars(args), "p90_xe": p90, "rows": rows, "summary": summary}, indent=1)
    )


if __name__ == "__main__":
    main()
