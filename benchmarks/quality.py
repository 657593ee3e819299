"""Quality benchmark: dreamed activation / the latent's in-context dataset maximum, at a fixed wall budget.

    python benchmarks/quality.py                                   # 30 residual latents, warm + cold, 60 s
    python benchmarks/quality.py --sae query --n-latents 10 --modes warm --out benchmarks/quality_query.json
    python benchmarks/quality.py --n-latents 8 --budget 240 --modes warm --out benchmarks/quality_240.json
    python benchmarks/quality.py --modes warm --xe-max p50,p90 --out benchmarks/quality.json   # readability

Latents: drawn by ``--seed`` from all live latents of the SAE, **never** the tuning latents
(``common.tune_latents``: those the optimizer's defaults were tuned on). Each latent is dreamed for the
same wall budget with ``--xe-max`` (default ``p90``: the 90th percentile of natural text's XE at the
dream's own length, from the SAE's shipped table) in each mode:

* warm: the default starts (``start='auto'``: the latent's dataset contexts at several lengths + model
  samples);
* cold: ``start='samples'`` (model samples only: no dataset knowledge).

``--xe-max`` may list several ceilings (``p50,p90``): each mode runs at each, as its own run (rows and
summaries are keyed ``mode@ceiling``, e.g. ``warm@p50``). The ceilings are percentiles of the model's
natural-text XE on the prose reference (:mod:`featuredream.lm.prose`).

Per run: ratio to the recorded in-context dataset max, XE and its limit, length, the best feasible
ratio at 15 / 60 / 240 s read from the run's own trajectory (``history``), and the fluency judge's
percentile of the dream among natural prose (``--judge``, default Gemma 3 270M, never used in the search:
:mod:`featuredream.lm.judge`; 50 = typical prose). ``--ladder`` adds a fluency ladder to every run and
records its rungs. Every reported activation is
re-scored from the decoded text by ``common.independent_score`` (plain ``hidden_states`` / a q_proj hook,
not featuredream's evaluator); the run fails loudly if one differs. Writes JSON and a plot.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import dataset_best_text, independent_score, live_sample, tune_latents  # noqa: E402

from featuredream import DreamConfig, dream, load_model, load_sae  # noqa: E402
from featuredream.engine.dream import judge_results  # noqa: E402
from featuredream.engine.objectives import make_objective  # noqa: E402
from featuredream.lm.judge import FluencyJudge  # noqa: E402

CURVE = (15, 60, 240)


def at_time(history: list[dict], t: float, dmax: float) -> float | None:
    """Best feasible ratio reached by ``t`` seconds (None: nothing feasible yet)."""
    vals = [h["best_activation"] for h in history if h["elapsed"] <= t and h.get("best_feasible")]
    return max(vals) / dmax if vals else None


def summarize(rows: list[dict]) -> dict:
    wins = [r for r in rows if r["feasible"] and r["ratio"] >= 1]
    pcts = [r["judge_pct"] for r in rows if r.get("judge_pct") is not None]
    out = dict(
        n=len(rows),
        frac_ratio_ge_1=len(wins) / len(rows),
        median_ratio=statistics.median(r["ratio"] if r["feasible"] else 0.0 for r in rows),
        median_xe=statistics.median(r["xe"] for r in rows),
        median_xe_limit=statistics.median(r["xe_limit"] for r in rows if r["xe_limit"] is not None)
        if any(r["xe_limit"] is not None for r in rows)
        else None,
        median_tokens=statistics.median(r["tokens"] for r in rows),
        median_iterations=statistics.median(r["iters"] for r in rows),
    )
    if pcts:
        out["median_judge_pct"] = statistics.median(pcts)
        out["judge_pct_above_95"] = sum(p > 95 for p in pcts)
        win_pcts = [r["judge_pct"] for r in wins if r.get("judge_pct") is not None]
        out["median_judge_pct_of_wins"] = statistics.median(win_pcts) if win_pcts else None
        ds = [r["dataset_judge_pct"] for r in rows if r.get("dataset_judge_pct") is not None]
        out["median_dataset_judge_pct"] = statistics.median(ds) if ds else None
    for t in CURVE:
        vals = [r["curve"].get(str(t)) for r in rows if r["budget"] >= t]
        if vals:
            v = [x if x is not None else 0.0 for x in vals]
            out[f"at_{t}s"] = dict(
                n=len(v), frac_ratio_ge_1=sum(x >= 1 for x in v) / len(v), median_ratio=statistics.median(v)
            )
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, s in result["summary"].items():
        ts = [t for t in CURVE if f"at_{t}s" in s]
        ax.plot(ts, [s[f"at_{t}s"]["median_ratio"] for t in ts], "o-", label=f"{mode}: median ratio")
        ax.plot(ts, [s[f"at_{t}s"]["frac_ratio_ge_1"] for t in ts], "s--", label=f"{mode}: share ≥ 1")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xticks(list(CURVE), [str(t) for t in CURVE])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("wall seconds per latent (2-core CPU)")
    ax.set_ylabel("ratio to dataset max / share of latents")
    ax.set_title(f"{result['sae']}, xe_max {result['args']['xe_max']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="model (default: the embedded SmolLM2; e.g. gemma3-270m)")
    ap.add_argument(
        "--sae", default="default", help="SAE with statistics (shipped, or made by featuredream stats)"
    )
    ap.add_argument("--n-latents", type=int, default=30)
    ap.add_argument("--budget", type=float, default=60.0, help="wall seconds per latent and mode")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--xe-max",
        default="p90",
        help="ceiling(s), comma-separated: each mode runs at each; CEILING+L adds xe_regularization L (p50+6)",
    )
    ap.add_argument("--judge", default="default", help="fluency judge model, or none")
    ap.add_argument(
        "--ladder", default="off", help="ladder ceilings, comma-separated (e.g. p50,p75,p90,none)"
    )
    ap.add_argument("--modes", default="warm,cold")
    ap.add_argument("--latents", default=None, help="comma-separated latents instead of a seeded draw")
    ap.add_argument("--out", default="benchmarks/quality.json")
    ap.add_argument("--plot", default=None, help="PNG path (default: --out with .png)")
    ap.add_argument("--replot", default=None, help="only redraw the plot of this JSON (nothing is run)")
    args = ap.parse_args()
    if args.replot:
        plot(
            json.loads(Path(args.replot).read_text()),
            Path(args.plot or Path(args.replot).with_suffix(".png")),
        )
        return
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(args.seed)
    model, tok = load_model(args.model, device="cpu")
    sae = load_sae(args.sae, model=model)
    tune = tune_latents(sae)
    if args.latents:
        latents = [int(x) for x in args.latents.split(",")]
    else:
        latents = live_sample(sae, args.n_latents, args.seed, exclude=tune)
    print(
        f"SAE {sae.name} at {sae.site}; xe_max {args.xe_max}; latents {latents} (tuning set {tune} excluded)"
    )
    judge = None if args.judge == "none" else FluencyJudge.load(args.judge)
    ladder = None if args.ladder == "off" else tuple(args.ladder.split(","))
    rows = []
    t_start = time.time()
    for mode, xe_max in [(m, x) for m in args.modes.split(",") for x in args.xe_max.split(",")]:
        for lat in latents:
            obj = make_objective(sae, lat)  # a QueryFeature for a one-head query SAE
            ceiling, _, lam = xe_max.partition("+")
            cfg = DreamConfig(
                iters=1_000_000,
                time_budget=args.budget,
                xe_max=ceiling,
                xe_regularization=float(lam or 0.0),
                seed=args.seed,
                start={"warm": "auto", "cold": "samples"}[mode],
                progress=False,
                patience=None,
                ladder=ladder,
            )
            r = dream(model, tok, obj, cfg)  # the judge scores afterwards, outside the timed search
            judge_results([r], judge)
            indep = independent_score(model, tok, sae, lat, r.best.text)
            if abs(indep - r.best.activation) > 1e-3 * max(1.0, abs(indep)):
                raise SystemExit(f"latent {lat}: reported {r.best.activation} but the text scores {indep}")
            row = dict(
                sae=sae.name,
                mode=mode if len(args.xe_max.split(",")) == 1 else f"{mode}@{xe_max}",
                xe_max=xe_max,
                latent=lat,
                budget=args.budget,
                activation=r.best.activation,
                independent_activation=indep,
                dataset_max=r.dataset_max,
                ratio=r.ratio,
                xe=r.best.xe,
                xe_limit=r.xe_limit,
                feasible=r.feasible,
                tokens=len(r.best.ids),
                start=r.start,
                iters=len(r.history),
                candidates=r.n_evaluated,
                curve={str(t): at_time(r.history, t, r.dataset_max) for t in CURVE if t <= args.budget},
                text=r.best.text,
                judge_pct=r.judge["percentile"] if r.judge else None,
                dataset_judge_pct=judge.score([dataset_best_text(sae, tok, lat, len(r.best.ids))])[
                    0
                ].percentile
                if judge
                else None,
                judge_xe=r.judge["xe"] if r.judge else None,
                ladder=[
                    dict(
                        ceiling=g.ceiling,
                        ratio=r.ratio_of(g.prompt),
                        xe=g.prompt.xe,
                        feasible=g.feasible,
                        judge_pct=g.judge["percentile"] if g.judge else None,
                        text=g.prompt.text,
                    )
                    for g in r.ladder
                ],
            )
            rows.append(row)
            write(args, sae, latents, tune, rows, t_start, final=False)  # a killed run keeps its rows
            print(
                f"{row['mode']:8s} {lat:5d} act {r.best.activation:8.3f} / max {r.dataset_max:8.3f} = {r.ratio:5.2f}  "
                f"XE {r.best.xe:5.2f} <= {r.xe_limit or float('nan'):5.2f} {'ok ' if r.feasible else 'INF'} "
                f"L {len(r.best.ids):2d} it {len(r.history):3d} judge {row['judge_pct'] or float('nan'):3.0f} "
                f"{r.start:8s} {r.best.text!r}",
                flush=True,
            )
    result = write(args, sae, latents, tune, rows, t_start, final=True)
    for m, s in result["summary"].items():
        print(
            f"{m}: ratio >= 1 (feasible) for {100 * s['frac_ratio_ge_1']:.0f}% of {s['n']} latents; median ratio "
            f"{s['median_ratio']:.2f}, median XE {s['median_xe']:.2f} (limit {s['median_xe_limit']}), "
            f"median length {s['median_tokens']}; "
            + (
                f"judge median {s['median_judge_pct']:.0f}, {s['judge_pct_above_95']} above 95; "
                if "median_judge_pct" in s
                else ""
            )
            + ", ".join(
                f"{t} s: {100 * s[f'at_{t}s']['frac_ratio_ge_1']:.0f}% / {s[f'at_{t}s']['median_ratio']:.2f}"
                for t in CURVE
                if f"at_{t}s" in s
            )
        )
    plot(result, Path(args.plot or Path(args.out).with_suffix(".png")))


def write(args, sae, latents, tune, rows, t_start, final: bool) -> dict:
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    result = dict(
        args=vars(args),
        sae=sae.name,
        latents=latents,
        tune_latents=tune,
        complete=final,
        rows=rows,
        summary={m: summarize([r for r in rows if r["mode"] == m]) for m in modes},
        seconds=round(time.time() - t_start, 1),
        torch_threads=torch.get_num_threads(),
    )
    Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
