"""Five dreams (the headline and each rung of the fluency ladder) next to the dataset's best example (README).

    python benchmarks/ladder_examples.py            # ~6 min on a 2-core CPU

The latents are the five lowest-numbered of the quality benchmark's seeded draw (``benchmarks/quality.py``,
seed 0, tuning latents excluded), fixed before any result was known. Each is dreamed once with the CLI's
defaults (60 s, the readable goal with its floor at the dataset maximum, ``--xe-max p90``, ladder p50 p75 p90
none); the headline and every rung are re-scored from their text by ``common.independent_score`` (the run fails
loudly if one differs) and judged by Gemma 3 270M (a percentile among natural prose of the same length, 50 =
typical). The dataset's best example is judged too, cut to the headline's length (its last tokens up to the
activating token: what the headline competes with, ``common.dominance``) and to 16 tokens. Writes
``benchmarks/ladder_examples.json``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    add_run_args,
    begin_run,
    dataset_best_text,
    dominance,
    end_run,
    independent_score,
    live_sample,
    machine_info,
    tune_latents,
    write_json,
)

from featuredream import DreamConfig, dream, load_model, load_sae  # noqa: E402
from featuredream.engine.config import DEFAULT_LADDER  # noqa: E402
from featuredream.engine.records import Rung  # noqa: E402
from featuredream.objectives.kinds import make_objective  # noqa: E402
from featuredream.text.judge import FluencyJudge  # noqa: E402


def parse_args() -> argparse.Namespace:
    """The command-line options."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="time budget per latent")
    ap.add_argument("--n", type=int, default=5, help="how many of the draw's latents (lowest first)")
    add_run_args(ap, "ladder_examples")
    return ap.parse_args()


def rung_row(model, tok, sae, lat: int, r, g) -> dict:
    """One rung of the dream's ladder, re-scored from its text (exits if the score differs)."""
    indep = independent_score(model, tok, sae, lat, g.prompt.text)
    if abs(indep - g.prompt.activation) > 1e-3 * max(1.0, abs(indep)):
        raise SystemExit(
            f"latent {lat} rung {g.ceiling}: reported {g.prompt.activation}, text scores {indep}"
        )
    return dict(
        ceiling=g.ceiling,
        feasible=g.feasible,
        text=g.prompt.text,
        activation=g.prompt.activation,
        ratio=r.ratio_of(g.prompt),
        xe=g.prompt.xe,
        xe_limit=g.xe_limit,
        judge_pct=g.judge.percentile,
    )


def ladder_row(model, tok, sae, judge, lat: int, seconds: float) -> dict:
    """Dream one latent with the CLI's defaults and judge its rungs and the dataset's best example; print them."""
    cfg = DreamConfig(
        time_budget=seconds, iters=1_000_000, xe_max="p90", ladder=DEFAULT_LADDER, progress=False
    )
    r = dream(model, tok, make_objective(sae, lat), cfg, judge=judge)
    rungs = [rung_row(model, tok, sae, lat, r, g) for g in r.ladder]
    head = rung_row(model, tok, sae, lat, r, Rung(r.headline, r.xe_limit, r.feasible, r.best, r.judge))
    best = dataset_best_text(sae, tok, lat)
    (dj,) = judge.score([best])
    row = dict(
        latent=lat, dataset_max=r.dataset_max, dataset_text_16=best, dataset_judge_pct_16=dj.percentile
    )
    row |= dict(headline=head, kind=r.headline, rungs=rungs) | dominance(judge, sae, tok, lat, r)
    print(f"{lat}: dataset {dj.percentile:3.0f} {best!r}")
    print(
        f"   headline ratio {head['ratio']:5.2f} judge {head['judge_pct']:3.0f} (dataset cut to its length "
        f"{row['dataset_judge_pct']:3.0f}: {row['dataset_text']!r}) {'DOM' if row['dominates'] else ''}"
        f" {head['text']!r}"
    )
    for g in rungs:
        print(
            f"   {g['ceiling']:>4} ratio {g['ratio']:5.2f} XE {g['xe']:5.2f} judge {g['judge_pct']:3.0f} {g['text']!r}"
        )
    return row


def main() -> None:
    """Dream the latents, judge every rung and the dataset's best examples, and write the JSON."""
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    idle, monitor = begin_run(args)
    torch.manual_seed(0)
    model, tok = load_model(None, device="cpu")
    sae = load_sae("default", model=model)
    judge = FluencyJudge.load("default")
    latents = live_sample(sae, 30, 0, exclude=tune_latents(sae))[: args.n]
    out, t0 = [], time.time()
    for lat in latents:
        out.append(ladder_row(model, tok, sae, judge, lat, args.seconds))
    result = dict(
        args=vars(args),
        machine=machine_info("cpu"),
        latents=latents,
        rows=out,
        seconds=round(time.time() - t0, 1),
        judge=judge.name,
        **end_run(idle, monitor),
    )
    write_json(args.out, result)


if __name__ == "__main__":
    main()
