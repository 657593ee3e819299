"""Raw directions under the norm guard: an honest dataset maximum, a dream that never reads a massive-norm
token, and a time budget that holds.

    python benchmarks/direction_dreams.py [--sites resid_post:12,resid_post:6] [--n 6] [--seconds 60]
        [--wait-load 1.0] [--out benchmarks/direction_dreams.json]

For ``--n`` directions at each site (``n / 2`` seeded random Gaussian draws and their negations, so half
point along the first token's massive activation and half away from it), with the CLI's defaults (``--xe-max p90``, the
ladder p50 p75 p90 none, start ``auto``):

* the hole: the unguarded corpus maximum (``norm_guard=False``) and whether it sits on a position above the
  site's norm cap, and the sign of the direction's projection on the first token (about half are positive:
  those are the directions whose unguarded maximum is the first token's massive norm);
* the guarded scan: its maximum, the norm of the maximum's token against the cap, and the maximum
  re-measured by scoring its context alone (a plain forward pass of those ids, no store);
* the dream: its ratio to that maximum, feasibility under the default ceiling, whether its scored (last)
  token is valid on the reference path, and its wall time against ``--seconds`` (the store of each site is
  built before its first direction and the build is printed as its own line, as the CLI does).

Writes ``--out``; exits non-zero if a maximum or a dream is read at an invalid position.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import add_run_args, begin_run, end_run, machine_info, write_json  # noqa: E402

from featuredream import DreamConfig, dream, load_model  # noqa: E402
from featuredream.engine.config import DEFAULT_LADDER  # noqa: E402
from featuredream.evaluation.evaluate import reference_evaluate  # noqa: E402
from featuredream.models.sites import parse_hook_name, run_sites  # noqa: E402
from featuredream.objectives.dataset import scan_objective, values_alone  # noqa: E402
from featuredream.objectives.kinds import DirectionObjective  # noqa: E402
from featuredream.text import activation_store as site_store


@torch.no_grad()
def last_norm(model, site, ids: list[int]) -> float:
    """The norm of ``site``'s activation at the last of ``ids`` (run alone)."""
    acts, _ = run_sites(model, [site], input_ids=torch.tensor([ids]))
    return float(acts[site][0, -1].float().flatten().norm())


def hole(model, tok, site, direction) -> dict:
    """The unguarded scan: its maximum, whether its token is above the cap, the first-token projection."""
    cap = site_store.site_norm_cap(model, tok, site)
    raw = scan_objective(model, tok, DirectionObjective(site, direction, norm_guard=False), min_tokens=8)
    windows, acts = site_store.site_store(model, tok, [site])
    first = acts[site][:, 0].float().flatten(1) @ (direction / direction.norm())
    return dict(
        cap=cap,
        unguarded_max=raw.maximum,
        unguarded_max_norm=last_norm(model, site, raw.maximum_context),
        first_token_projection=float(first.median()),
    )


def guarded(model, tok, site, direction, seconds: float, seed: int) -> dict:
    """A dream at the CLI's defaults (the first at a site builds its store) and the guarded scan behind its
    ratio; every figure checked from the text or the ids."""
    obj = DirectionObjective(site, direction)
    cfg = DreamConfig(time_budget=seconds, xe_max="p90", ladder=DEFAULT_LADDER, seed=seed, progress=False)
    t = time.time()
    r = dream(model, tok, obj, cfg)
    wall = time.time() - t
    ref = reference_evaluate(model, tok, obj, [r.best.text])
    found = scan_objective(model, tok, obj, min_tokens=8)
    alone = values_alone(model, obj, [found.maximum_context])[0]
    return dict(
        maximum=found.maximum,
        maximum_norm=last_norm(model, site, found.maximum_context),
        maximum_alone=alone,
        maximum_rel_error=abs(alone - found.maximum) / max(1e-9, abs(found.maximum)),
        maximum_text=tok.decode(found.maximum_context[-16:]),
        ratio=r.ratio,
        headline=r.headline,
        most_activating_ratio=r.ratio_of(r.most_activating),
        activation=r.best.activation,
        reference_activation=float(ref.scores[0]),
        dream_last_valid=bool(ref.valid[0, len(r.best.ids) - 1]),
        dream_last_norm=last_norm(model, site, r.best.ids),
        feasible=r.feasible,
        xe=r.best.xe,
        xe_limit=r.xe_limit,
        text=r.best.text,
        iterations=len(r.history),
        wall=wall,
        setup=[dict(what=s.what, seconds=s.seconds) for s in r.setup],
        setup_seconds=sum(s.seconds for s in r.setup),
        search_wall=wall - sum(s.seconds for s in r.setup),
    )


def run_site(model, tok, site_spec: str, n: int, seconds: float) -> list[dict]:
    site = parse_hook_name(site_spec)
    g = torch.Generator().manual_seed(0)
    draws = [torch.randn(model.config.hidden_size, generator=g) for _ in range((n + 1) // 2)]
    rows = []
    for i in range(n):  # each draw and its negation: one of the two points along the first token's vector
        direction = draws[i // 2] * (1 if i % 2 == 0 else -1)
        row = dict(site=str(site), direction=i, **guarded(model, tok, site, direction, seconds, seed=i))
        row |= hole(model, tok, site, direction)
        for s in row["setup"]:
            print(f"  setup: {s['what']} in {s['seconds']:.1f} s (outside the budget)", flush=True)
        print(
            f"{site} #{i}: first-token projection {row['first_token_projection']:+9.1f}; unguarded max "
            f"{row['unguarded_max']:8.2f} (norm {row['unguarded_max_norm']:8.1f}, cap {row['cap']:.1f}); max "
            f"{row['maximum']:6.2f} (alone {row['maximum_alone']:6.2f}); dream ratio {row['ratio']:.2f} "
            f"feasible {row['feasible']} last valid {row['dream_last_valid']}; wall {row['wall']:.1f} s "
            f"(search {row['search_wall']:.1f}) {row['text']!r}",
            flush=True,
        )
        rows.append(row)
    return rows


def summary(rows: list[dict], seconds: float) -> dict:
    ok = [r for r in rows if r["feasible"] and r["ratio"] is not None and r["ratio"] >= 1]
    return dict(
        n=len(rows),
        beat_max=len(ok),
        most_activating_beat_max=sum(r["most_activating_ratio"] >= 1 for r in rows),
        median_most_activating_ratio=statistics.median(r["most_activating_ratio"] for r in rows),
        median_ratio=statistics.median(r["ratio"] for r in rows),
        positive_first_token=sum(r["first_token_projection"] > 0 for r in rows),
        unguarded_max_above_cap=sum(r["unguarded_max_norm"] > r["cap"] for r in rows),
        maxima_valid=sum(r["maximum_norm"] <= r["cap"] for r in rows),
        maxima_reproduced=sum(r["maximum_rel_error"] <= 1e-4 for r in rows),
        dreams_valid=sum(r["dream_last_valid"] and r["dream_last_norm"] <= r["cap"] for r in rows),
        max_search_wall=max(r["search_wall"] for r in rows),
        max_wall_store_cached=max(r["wall"] for r in rows[1:]) if len(rows) > 1 else None,
        budget=seconds,
    )


def fresh_site_cache() -> None:
    """Point the cache at a new folder that shares everything but the activation stores and norm caps, so
    each site's store is built (and its cost shown) by its first dream."""
    import os
    import tempfile

    from featuredream.models.loading import cache_dir

    real, fresh = cache_dir(), Path(tempfile.mkdtemp(prefix="featuredream-cache-"))
    for entry in real.iterdir():
        if entry.name != "sites":
            (fresh / entry.name).symlink_to(entry)
    os.environ["FEATUREDREAM_CACHE"] = str(fresh)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sites", default="resid_post:12,resid_post:6")
    ap.add_argument("--n", type=int, default=6, help="random directions per site")
    ap.add_argument("--seconds", type=float, default=60.0, help="each dream's --time-budget")
    add_run_args(ap, "direction_dreams")
    args = ap.parse_args()
    model, tok = load_model(None, device="cpu")
    fresh_site_cache()
    idle, monitor = begin_run(args)
    rows = {s: run_site(model, tok, s, args.n, args.seconds) for s in args.sites.split(",")}
    run = end_run(idle, monitor)
    sums = {s: summary(r, args.seconds) for s, r in rows.items()}
    for s, v in sums.items():
        print(s, v)
    write_json(args.out, dict(args=vars(args), machine=machine_info("cpu"), summary=sums, rows=rows, **run))
    bad = [r for rs in rows.values() for r in rs if not r["dream_last_valid"] or r["maximum_norm"] > r["cap"]]
    if bad:
        raise SystemExit(f"{len(bad)} maxima or dreams read at an invalid position")


if __name__ == "__main__":
    main()
