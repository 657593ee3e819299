"""Cost of one evaluation step vs sequence length, children per iteration and model size.

    python benchmarks/scaling.py [--models default,smollm2-360m] [--lengths 8,16,32,64]
        [--children 16,32,64,128] [--base-length 16] [--base-children 32] [--reps 3]
        [--device cpu|cuda] [--dtype float32|bfloat16] [--threads N] [--wait-load 1.0]
        [--out benchmarks/scaling.json]

For each model, one axis is swept at a time around the base point (lengths at ``--base-children``,
children at ``--base-length``). A batch is ``n`` children of one random parent, each with one token
swapped at a random position (what GCG / sampled swaps make). Three paths through the
:class:`~featuredream.evaluate.Evaluator`, median ms per batch over ``--reps`` after a warm-up:

* ``early exit``: to the objective's layer (40% of the depth, where the default SAE reads SmolLM2-135M);
* ``early exit + prefix cache``: the same, children run from their first changed token on;
* ``full + XE``: every layer and the LM head, with cross-entropy.

Models: ``default`` (SmolLM2-135M-Instruct, trained weights), ``smollm2-360m`` (random weights in
SmolLM2-360M's shape: d 960, 32 layers, 15 heads, 5 KV heads, MLP 2560) and ``gemma2-2b`` (random
weights in Gemma-2-2B's shape: for a GPU). Random weights cost what trained weights cost. Prints a
markdown table.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).parent))

from common import add_run_args, begin_run, end_run, machine_info, write_json  # noqa: E402

from featuredream import DirectionObjective, load_model
from featuredream.evaluation.evaluate import Evaluator
from featuredream.models.loading import parse_device, parse_dtype, text_config
from featuredream.models.sites import Site

SHAPES = {
    "smollm2-360m": dict(
        arch="llama",
        vocab_size=49152,
        hidden_size=960,
        intermediate_size=2560,
        num_hidden_layers=32,
        num_attention_heads=15,
        num_key_value_heads=5,
        tie_word_embeddings=True,
    ),
    "gemma2-2b": dict(
        arch="gemma2",
        vocab_size=256000,
        hidden_size=2304,
        intermediate_size=9216,
        num_hidden_layers=26,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
        query_pre_attn_scalar=256,
        sliding_window=4096,
    ),
}


def build(name: str, device: torch.device, dtype: torch.dtype):
    """The default model, or a random-weight model of a named shape (built directly on ``device``)."""
    if name == "default":
        return load_model(None, device=str(device), dtype=dtype)[0]
    from transformers import AutoModelForCausalLM, Gemma2Config, LlamaConfig

    shape = dict(SHAPES[name])
    arch = shape.pop("arch")
    cfg = (LlamaConfig if arch == "llama" else Gemma2Config)(**shape, max_position_embeddings=2048)
    attn = "sdpa" if arch == "llama" else "eager"  # Gemma-2's softcapping has no SDPA path
    torch.manual_seed(0)
    with device:
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn, dtype=dtype)
    return model.eval().requires_grad_(False)


def batch(vocab: int, n: int, length: int, device, seed: int = 0):
    """``parent [length]``, children ``ids [n, length]`` (one swap each), ``lengths [n]``."""
    g = torch.Generator().manual_seed(seed)
    parent = torch.randint(100, min(vocab, 30000), (length,), generator=g)
    kids = parent.repeat(n, 1)
    pos = torch.randint(0, length, (n,), generator=g)
    kids[torch.arange(n), pos] = torch.randint(100, min(vocab, 30000), (n,), generator=g)
    return parent.to(device), kids.to(device), torch.full((n,), length, device=device)


def time_ms(fn, reps: int, device) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        ts.append(1e3 * (time.perf_counter() - t))
    return statistics.median(ts)


def parse_args() -> argparse.Namespace:
    """The command-line options."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="default,smollm2-360m")
    ap.add_argument("--lengths", default="8,16,32,64")
    ap.add_argument("--children", default="16,32,64,128")
    ap.add_argument("--base-length", type=int, default=16)
    ap.add_argument("--base-children", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    add_run_args(ap, "scaling")
    return ap.parse_args()


def sweep_model(name: str, points: list[tuple[int, int]], reps: int, device, dtype) -> list[dict]:
    """One model's rows: the three paths timed at each ``(children, length)`` point."""
    model = build(name, device, dtype)
    cfg = text_config(model)
    layer = round(0.4 * cfg.num_hidden_layers)
    direction = torch.randn(cfg.hidden_size, generator=torch.Generator().manual_seed(0))
    obj = DirectionObjective(Site("resid_post", layer), direction)
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    vocab = model.get_input_embeddings().weight.shape[0]
    rows = []
    for n, L in tqdm(points, desc=name, unit="point"):
        parent, ids, lengths = batch(vocab, n, L, device)
        early = Evaluator(model, obj, need_xe=False, batch_size=n)
        cached = Evaluator(model, obj, need_xe=False, batch_size=n, prefix_cache=True)
        full = Evaluator(model, obj, need_xe=True, batch_size=n)
        row = dict(
            model=name,
            params_m=round(n_params),
            layers=cfg.num_hidden_layers,
            objective_layer=layer,
            children=n,
            length=L,
            early_ms=time_ms(partial(early, ids, lengths), reps, device),
            cached_ms=time_ms(partial(cached, ids, lengths, parent=parent), reps, device),
            full_ms=time_ms(partial(full, ids, lengths), reps, device),
        )
        rows.append(row)
    return rows


def print_table(rows: list[dict], reps: int, device, dtype) -> None:
    """Print the markdown table of the rows."""
    print(f"\ndevice {device} ({dtype}, {torch.get_num_threads()} threads); median of {reps} after a warm-up")
    print(
        "| model | params (M) | children | tokens | early exit (ms) | + prefix cache (ms) | full + XE (ms) "
        "| full / early |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['params_m']} | {r['children']} | {r['length']} | {r['early_ms']:.0f} | "
            f"{r['cached_ms']:.0f} | {r['full_ms']:.0f} | {r['full_ms'] / r['early_ms']:.2f} |"
        )


def main() -> None:
    """Sweep each model over the points, print the table and write the JSON."""
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    idle, monitor = begin_run(args)
    device = parse_device(args.device)
    dtype = parse_dtype(args.dtype) or torch.float32
    points = [(int(n), args.base_length) for n in args.children.split(",")]
    points += [(args.base_children, int(L)) for L in args.lengths.split(",")]
    points = list(dict.fromkeys(points))
    rows = []
    for name in args.models.split(","):
        rows += sweep_model(name, points, args.reps, device, dtype)
    print_table(rows, args.reps, device, dtype)
    write_json(
        args.out,
        {
            "args": vars(args),
            "device": str(device),
            "machine": machine_info(device, dtype),
            **end_run(idle, monitor),
            "rows": rows,
        },
    )


if __name__ == "__main__":
    sys.exit(main())
