"""What dataset starts cost for an objective without statistics (a direction, a callable, an SAE without
statistics): the activation store of its site against a direct pass over the same corpus windows.

    python benchmarks/corpus_scan.py [--site resid_post:12] [--objectives 8] [--wait-load 1.0]
        [--out benchmarks/corpus_scan.json]

* ``direct``: for each objective, a forward pass over the store's windows to the site, the objective on the
  activations, the top windows (what a design without a store pays every time);
* ``store_build``: the first objective at a site with the store: capture once (float16, cached on disk),
  then scan;
* ``store_scan``: every later objective at that site: read the store, one pass of the objective over it.

Prints seconds per objective for each, the ratio direct / store_scan, and the store's size on disk; checks
that both designs pick the same top windows (up to float16 rounding of the store); writes ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import add_run_args, begin_run, end_run, machine_info, write_json  # noqa: E402

from featuredream import load_model  # noqa: E402
from featuredream.models.sites import parse_hook_name  # noqa: E402
from featuredream.objectives.dataset import scan_objective, token_values, top_windows  # noqa: E402
from featuredream.objectives.kinds import DirectionObjective  # noqa: E402
from featuredream.text import activation_store as site_store


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--site", default="resid_post:12")
    ap.add_argument("--objectives", type=int, default=8)
    add_run_args(ap, "corpus_scan")
    args = ap.parse_args()
    model, tok = load_model(None, device="cpu")
    site = parse_hook_name(args.site)
    g = torch.Generator().manual_seed(0)
    width = model.config.hidden_size
    objs = [DirectionObjective(site, torch.randn(width, generator=g)) for _ in range(args.objectives)]
    windows = site_store.store_windows(tok)
    idle, monitor = begin_run(args)
    direct, same = [], []
    for obj in objs:
        t = time.perf_counter()
        found = top_windows(windows, token_values(model, obj, windows), 8, "direct", 8)
        direct.append(time.perf_counter() - t)
        same.append(found.contexts)
    with tempfile.TemporaryDirectory() as cache:
        import os

        os.environ["FEATUREDREAM_CACHE"] = cache
        t = time.perf_counter()
        first = scan_objective(model, tok, objs[0], min_tokens=8)
        build = time.perf_counter() - t
        scans, agree = [], [first.contexts == same[0]]
        for obj, want in zip(objs[1:], same[1:]):
            t = time.perf_counter()
            got = scan_objective(model, tok, obj, min_tokens=8)
            scans.append(time.perf_counter() - t)
            agree.append(got.contexts == want)
        size_mb = sum(p.stat().st_size for p in Path(cache).rglob("*.safetensors")) / 2**20
    run = end_run(idle, monitor)
    per = {"direct": sum(direct) / len(direct), "store_build": build, "store_scan": sum(scans) / len(scans)}
    for k, v in per.items():
        print(f"{k:12s} {v:7.2f} s per objective")
    ratio = per["direct"] / per["store_scan"]
    print(
        f"direct / store scan: {ratio:.1f}x; store {size_mb:.1f} MB on disk; same top windows {sum(agree)}/{len(agree)}"
    )
    write_json(
        args.out,
        dict(
            args=vars(args),
            machine=machine_info("cpu"),
            tokens=windows.numel(),
            seconds_per_objective=per,
            direct_over_store_scan=ratio,
            store_mb=size_mb,
            same_top_windows=f"{sum(agree)}/{len(agree)}",
            **run,
        ),
    )


if __name__ == "__main__":
    main()
