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
natural-text XE on the prose reference (:mod:`featuredream.text.prose`).

Per run: ratio to the recorded in-context dataset max, XE and its limit, length, the best feasible
ratio at 15 / 60 / 240 s read from the run's own trajectory (``history``), and the fluency judge's
percentile of the dream among natural prose (``--judge``, default Gemma 3 270M, never used in the search:
:mod:`featuredream.text.judge`; 50 = typical prose). ``--ladder`` adds a fluency ladder to every run and
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
from common import dominance, independent_score, live_sample, tune_latents  # noqa: E402

from featuredream import DreamConfig, dream, load_model, load_sae  # noqa: E402
from featuredream.engine.dream import judge_results  # noqa: E402
from featuredream.objectives.kinds import make_objective  # noqa: E402
from featuredream.text.judge import FluencyJudge  # noqa: E402

CURVE = (15, 60, 240)


def at_time(history: list[dict], t: float, dmax: float) -> float | None:
    """Best feasible ratio reached by ``t`` seconds (None: nothing feasible yet)."""
    vals = [h.best_activation for h in history if h.elapsed <= t and h.best_feasible]
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
    doms = [r["dominates"] for r in rows if "dominates" in r]
    if doms:
        out["dominate"] = sum(doms)
        out["frac_dominate"] = sum(doms) / len(doms)
        out["dominating_dreams"] = [r["dominating_dreams"] for r in rows]
        out["verbatim"] = sum(r["verbatim"] for r in rows)
        out["readable_headlines"] = sum(r["headline"] == "readable" for r in rows)
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


def parse_args():
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
        "--ladder",
        default="p50,p75,p90,none",
        help="ladder ceilings, comma-separated, or off (default: the CLI's)",
    )
    ap.add_argument("--goal", default="readable", help="readable (the CLI default) or max")
    ap.add_argument("--dreams", type=int, default=1, help="distinct dreams per latent (K)")
    ap.add_argument("--modes", default="warm,cold")
    ap.add_argument("--latents", default=None, help="comma-separated latents instead of a seeded draw")
    ap.add_argument("--out", default="benchmarks/quality.json")
    ap.add_argument("--plot", default=None, help="PNG path (default: --out with .png)")
    ap.add_argument("--replot", default=None, help="only redraw the plot of this JSON (nothing is run)")
    ap.add_argument("--resume", action="store_true", help="keep the rows an interrupted --out already has")
    return ap.parse_args()


def resumed_rows(args) -> list[dict]:
    """The rows of an interrupted run of the same settings at --out (a killed run writes after each latent)."""
    path = Path(args.out)
    if not (args.resume and path.exists()):
        return []
    old = json.loads(path.read_text())
    same = ("model", "sae", "budget", "seed", "xe_max", "ladder", "goal", "dreams", "judge")
    if any(old["args"].get(k) != getattr(args, k) for k in same):
        raise SystemExit(f"--resume: {path} was run with other settings; drop --resume or change --out")
    print(f"resuming: {len(old['rows'])} rows kept from {path}")
    return old["rows"]


def config(args, mode: str, xe_max: str, ladder) -> DreamConfig:
    ceiling, _, lam = xe_max.partition("+")
    return DreamConfig(
        iters=1_000_000,
        time_budget=args.budget,
        xe_max=ceiling,
        xe_regularization=float(lam or 0.0),
        seed=args.seed,
        start={"warm": "auto", "cold": "samples"}[mode],
        progress=False,
        patience=None,
        ladder=ladder,
        goal=args.goal,
        dreams=args.dreams,
    )


def run_latent(model, tok, sae, judge, lat: int, mode: str, xe_max: str, ladder, args) -> dict:
    """One latent's dream in one mode at one ceiling; every reported activation re-scored independently."""
    r = dream(model, tok, make_objective(sae, lat), config(args, mode, xe_max, ladder))
    judge_results([r], judge)  # the judge scores afterwards, outside the timed search
    for p in [r.best] + [d.prompt for d in r.dreams]:
        indep = independent_score(model, tok, sae, lat, p.text)
        if abs(indep - p.activation) > 1e-3 * max(1.0, abs(indep)):
            raise SystemExit(f"latent {lat}: reported {p.activation} but {p.text!r} scores {indep}")
    row = dict(sae=sae.name, mode=mode if len(args.xe_max.split(",")) == 1 else f"{mode}@{xe_max}")
    row |= dict(xe_max=xe_max, latent=lat, budget=args.budget, activation=r.best.activation)
    row |= dict(independent_activation=independent_score(model, tok, sae, lat, r.best.text))
    row |= dict(
        dataset_max=r.dataset_max, ratio=r.ratio, xe=r.best.xe, xe_limit=r.xe_limit, feasible=r.feasible
    )
    row |= dict(tokens=len(r.best.ids), start=r.start, iters=len(r.history), candidates=r.n_evaluated)
    row |= dict(curve={str(t): at_time(r.history, t, r.dataset_max) for t in CURVE if t <= args.budget})
    row |= dict(text=r.best.text, headline=r.headline, most_activating_ratio=r.ratio_of(r.most_activating))
    row |= dominance(judge, sae, tok, lat, r) if judge else dict(judge_pct=None, dataset_judge_pct=None)
    row["ladder"] = [
        dict(
            ceiling=g.ceiling,
            ratio=r.ratio_of(g.prompt),
            xe=g.prompt.xe,
            feasible=g.feasible,
            text=g.prompt.text,
        )
        | dict(judge_pct=g.judge.percentile if g.judge else None)
        for g in r.ladder
    ]
    row["dreams"] = [
        dict(text=d.prompt.text, ratio=r.ratio_of(d.prompt), above_floor=d.above_floor)
        | dict(judge_pct=d.judge.percentile if d.judge else None, judge_xe=d.judge.xe if d.judge else None)
        for d in r.dreams
    ]
    return row


def _nan(x: float | None) -> float:
    return float("nan") if x is None else x


def print_row(row: dict) -> None:
    print(
        f"{row['mode']:8s} {row['latent']:5d} ratio {row['ratio']:5.2f} (max {row['most_activating_ratio']:5.2f}) "
        f"XE {row['xe']:5.2f} <= {_nan(row['xe_limit']):5.2f} L {row['tokens']:2d} it {row['iters']:3d} "
        f"judge {_nan(row['judge_pct']):3.0f} (data {_nan(row['dataset_judge_pct']):3.0f}) "
        f"{'DOM' if row.get('dominates') else '   '} {row['text']!r}",
        flush=True,
    )


def main() -> None:
    args = parse_args()
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
    rows, t_start = resumed_rows(args), time.time()
    done = {(r["mode"], r["latent"]) for r in rows}
    for mode, xe_max in [(m, x) for m in args.modes.split(",") for x in args.xe_max.split(",")]:
        for lat in latents:
            if (mode if len(args.xe_max.split(",")) == 1 else f"{mode}@{xe_max}", lat) in done:
                continue
            rows.append(run_latent(model, tok, sae, judge, lat, mode, xe_max, ladder, args))
            write(args, sae, latents, tune, rows, t_start, final=False)  # a killed run keeps its rows
            print_row(rows[-1])
    result = write(args, sae, latents, tune, rows, t_start, final=True)
    for m, s in result["summary"].items():
        print(m, json.dumps({k: v for k, v in s.items() if not k.startswith("at_")}))
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
