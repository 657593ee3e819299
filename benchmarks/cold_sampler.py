"""The cold start's model samples: the plain decoding loop (``model_samples(fast=True)``: key/value cache,
``logits_to_keep=1``, a draw from the top 50 logits) against ``generate`` with the same top-k 50 sampling
(a softmax and a draw over the whole vocabulary at every step), same run, same model:

    python benchmarks/cold_sampler.py [--n 256] [--length 16] [--repeats 3] [--wait-load 1.0]
        [--out benchmarks/cold_sampler.json]

Prints the best-of-``--repeats`` seconds of each and their ratio; writes them to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import add_run_args, begin_run, end_run, machine_info, write_json  # noqa: E402

from featuredream import load_model  # noqa: E402
from featuredream.engine.starts import model_samples  # noqa: E402


def seconds(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=256, help="samples")
    ap.add_argument("--length", type=int, default=16, help="tokens per sample")
    ap.add_argument("--repeats", type=int, default=3)
    add_run_args(ap, "cold_sampler")
    args = ap.parse_args()
    model, tok = load_model(None, device="cpu")
    idle, monitor = begin_run(args)
    paths = {}
    for name, fast in (("generate", False), ("fast", True)):
        paths[name] = seconds(
            lambda f=fast: model_samples(model, tok, args.n, args.length, 0, fast=f), args.repeats
        )
        print(f"{name:9s} {paths[name]:6.2f} s for {args.n} samples of {args.length} tokens", flush=True)
    ratio = paths["generate"] / paths["fast"]
    print(f"fast sampler: {ratio:.2f}x the generate baseline")
    run = end_run(idle, monitor)
    write_json(
        args.out,
        dict(args=vars(args), machine=machine_info("cpu"), seconds=paths, speedup=ratio, **run),
    )


if __name__ == "__main__":
    main()
