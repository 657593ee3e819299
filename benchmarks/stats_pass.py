"""Throughput of ``featuredream stats`` (the streaming statistics pass) against two baselines, same run:

    python benchmarks/stats_pass.py [--sae default] [--tokens 32768] [--device cpu] [--wait-load 1.0]
        [--out benchmarks/stats_pass.json]

* ``forward``: the forward pass to the SAE's site alone (no statistics): the ceiling of any pass;
* ``stats``: the streaming pass (:func:`featuredream.saes.stats.compute_statistics` without its XE table):
  running top-k examples per latent, fire counts, decoder projections, checkpoints;
* ``in_memory``: what the statistics used to be made with: capture every activation, then
  ``feature_statistics`` over all of them at once (memory grows with the corpus: ``tokens x d_in x 4``
  bytes, 1.4 GB at 600k tokens for SmolLM2).

Prints tokens/s of each, the statistics pass' share of the forward-only rate, its ratio to the in-memory
path, and the peak resident memory of each; writes everything to ``--out``.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import add_run_args, begin_run, end_run, machine_info, write_json  # noqa: E402

from featuredream import load_model, load_sae  # noqa: E402
from featuredream.saes import stats as stats_pass
from featuredream.saes.training import (
    Encoder,
    capture_windows,  # noqa: E402
    feature_statistics,
)
from featuredream.text.corpus import default_corpus, split_windows  # noqa: E402


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sae", default="default")
    ap.add_argument("--tokens", type=int, default=32_768)
    ap.add_argument("--device", default="cpu")
    add_run_args(ap, "stats_pass")
    args = ap.parse_args()
    model, tok = load_model(None, device=args.device)
    sae = load_sae(args.sae, model=model)
    cfg = stats_pass.StatsConfig(tokens=args.tokens, ctx=64)
    wins, _ = split_windows(tok, default_corpus(), 64, args.tokens, 0, torch.Generator().manual_seed(0))
    n_tok = wins.numel()
    idle, monitor = begin_run(args)
    out = {}
    with torch.no_grad():
        out["forward"] = timed(lambda: capture_windows(model, wins, sae.site, 32, "forward"))
    mem0 = rss_mb()

    def streaming():
        st = stats_pass.TopState.empty(cfg.top_k_examples, sae.d_sae, 64 + cfg.after, wins.device)
        cap = stats_pass.norm_cap_of(model, sae, wins, 32)
        with tempfile.TemporaryDirectory() as d:
            stats_pass._run_batches(model, sae, wins, st, cfg, cap, lambda s: s.save(Path(d) / "p", {}))

    out["stats"] = timed(streaming)
    mem_stats = rss_mb()

    def in_memory():
        with torch.no_grad():
            acts = capture_windows(model, wins, sae.site, 32, "capture")
            keep = acts.norm(dim=-1) <= sae.stats.norm_cap
            feature_statistics(Encoder.of(sae.sae), acts, keep, wins, k=int(sae.sae.cfg.k), top_k_examples=8)

    out["in_memory"] = timed(in_memory)
    run = end_run(idle, monitor)
    rate = {k: n_tok / v for k, v in out.items()}
    for k, v in rate.items():
        print(f"{k:10s} {v:8.0f} tokens/s ({out[k]:.1f} s for {n_tok} tokens)")
    ratios = {
        "stats_over_forward": rate["stats"] / rate["forward"],
        "stats_over_in_memory": rate["stats"] / rate["in_memory"],
    }
    print(
        f"statistics pass: {ratios['stats_over_forward']:.2f}x the forward-only rate, "
        f"{ratios['stats_over_in_memory']:.2f}x the in-memory path"
    )
    write_json(
        args.out,
        dict(
            args=vars(args),
            machine=machine_info(args.device),
            sae=sae.name,
            d_sae=sae.d_sae,
            tokens=n_tok,
            seconds=out,
            tokens_per_s=rate,
            ratios=ratios,
            peak_rss_mb={"after_forward": mem0, "after_stats": mem_stats, "after_in_memory": rss_mb()},
            in_memory_activation_mb_at_600k=600_000 * sae.d_in * 4 / 2**20,
            **run,
        ),
    )


if __name__ == "__main__":
    main()
