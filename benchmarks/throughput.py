"""Throughput: the optimized evaluator against a plain reference evaluator, same machine, same run.

    python benchmarks/throughput.py [--model NAME] [--children 128] [--tokens 16] [--iters 5]

The reference is what published dreaming code does (seed 003): decode candidates to strings, re-tokenize
them with padding every iteration, run the full model in float32 with an attention mask, copy logits to
the host, and compute the feature and XE there. The optimized path keeps ids on the device, right-pads
without a mask, stops at the objective's layer when XE is not needed, and (with XE) finishes the forward
pass only for children that could enter the buffer (the cascade). Both score the same candidate batches;
the script prints candidates/s, ms/iteration, top-1 agreement, peak memory, the arithmetic floor and the
ratio, last.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from featuredream import DirectionObjective, SAEEncoder, load_model, load_sae  # noqa: E402
from featuredream.engine.evaluate import Evaluator  # noqa: E402
from featuredream.lm.models import text_config  # noqa: E402
from featuredream.lm.sites import Site, run_sites  # noqa: E402
from featuredream.lm.xe import sequence_xe  # noqa: E402


def candidate_batches(tok, n_batches: int, n: int, length: int, seed: int) -> list[torch.Tensor]:
    """Batches of ``n`` children of a fluent parent, each with one random swap: ``[n, length]`` each."""
    parent = tok(
        "The old lighthouse keeper climbed the spiral stairs every evening, counting each step as the storm "
        "rolled in from the sea and the gulls",
        add_special_tokens=False,
    )["input_ids"][:length]
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        kids = torch.tensor(parent).repeat(n, 1)
        pos = torch.randint(0, length, (n,), generator=g)
        kids[torch.arange(n), pos] = torch.randint(100, 30000, (n,), generator=g)
        out.append(kids)
    return out


@torch.no_grad()
def reference_iteration(model, tok, objective, kids: torch.Tensor):
    """Seed-003 style: strings, padded re-tokenization, full fp32 forward with mask, host-side scoring."""
    texts = tok.batch_decode(kids)
    enc = tok(texts, padding=True, return_tensors="pt", add_special_tokens=False)
    acts, logits = run_sites(
        model, objective.sites, input_ids=enc.input_ids, attention_mask=enc.attention_mask, logits=True
    )
    logits = logits.cpu()
    acts = {k: v.cpu() for k, v in acts.items()}
    mask = enc.attention_mask.bool()
    scores = objective(acts, mask).scores
    xe = sequence_xe(logits, enc.input_ids, mask)
    return scores, xe


def cpu_peak_gflops() -> float:
    """Measured fp32 matmul throughput of this machine (the 'hardware limit' used for the floor)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    t = time.perf_counter()
    for _ in range(5):
        a @ b
    return 5 * 2 * 2048**3 / (time.perf_counter() - t) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--children", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--feature", type=int, default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    args = ap.parse_args()
    model, tok = load_model(args.model, device=args.device, dtype=args.dtype)
    dev = next(model.parameters()).device
    cfg = text_config(model)
    if args.model is None:
        sae = load_sae("default", model=model)
        feature = args.feature if args.feature is not None else int(sae.stats.live_latents()[0])
        objective = SAEEncoder(sae, feature)
    else:
        layer = cfg.num_hidden_layers // 2
        objective = DirectionObjective(
            Site("resid_post", layer),
            torch.randn(cfg.hidden_size, generator=torch.Generator().manual_seed(0)),
        )
    batches = candidate_batches(tok, args.iters + 1, args.children, args.tokens, seed=0)
    n_params = sum(p.numel() for p in model.parameters())
    n_embed = model.get_input_embeddings().weight.numel()
    layer = max(s.layer for s in objective.sites)
    per_layer = (n_params - n_embed) / cfg.num_hidden_layers  # tied embeddings: the head reuses n_embed

    def timed(fn):
        fn(batches[0])  # warm-up
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        outs = [fn(b) for b in batches[1:]]
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t) / args.iters, outs

    lengths = torch.full((args.children,), args.tokens, device=dev)
    ref_t, ref_out = timed(lambda b: reference_iteration(model, tok, objective, b))
    full = Evaluator(model, objective, need_xe=True, batch_size=args.children)
    full_t, full_out = timed(lambda b: full(b.to(dev), lengths))
    early = Evaluator(model, objective, need_xe=False, batch_size=args.children)
    early_t, early_out = timed(lambda b: early(b.to(dev), lengths))

    def agree(outs) -> float:
        """Fraction of batches where both evaluators pick the same best candidate."""
        return sum(
            int(torch.argmax(r[0]) == torch.argmax(o.scores.cpu())) for r, o in zip(ref_out, outs)
        ) / len(outs)

    max_err = max(float((rs - o.scores.cpu()).abs().max()) for (rs, _), o in zip(ref_out, full_out))
    max_xe_err = max(float((rx - o.xe.cpu()).abs().max()) for (_, rx), o in zip(ref_out, full_out))
    tokens = args.children * args.tokens
    flops_full = 2 * tokens * (per_layer * cfg.num_hidden_layers + n_embed)
    flops_early = 2 * tokens * per_layer * (layer + 1)
    peak = cpu_peak_gflops() if dev.type == "cpu" else {"H100": 989e3, "H200": 989e3}.get("H100", 989e3)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"model {args.model or 'default'} on {dev} ({next(model.parameters()).dtype}); "
        f"{args.children} children x {args.tokens} tokens; objective at layer {layer} of {cfg.num_hidden_layers}"
    )
    print(f"{'path':34s} {'ms/iter':>9s} {'cand/s':>9s} {'GFLOP/s':>9s} {'% of peak':>9s}")
    for name, t, fl in (
        ("reference (strings, fp32, mask)", ref_t, flops_full),
        ("optimized, with XE (full)", full_t, flops_full),
        ("optimized, no XE (early exit)", early_t, flops_early),
    ):
        print(
            f"{name:34s} {1e3 * t:9.1f} {args.children / t:9.0f} {fl / t / 1e9:9.1f} {100 * fl / t / 1e9 / peak:8.1f}%"
        )
    print(
        f"top-1 agreement with reference: with XE {agree(full_out):.2f}, early exit {agree(early_out):.2f}; "
        f"max |score diff| {max_err:.2e}, max |XE diff| {max_xe_err:.2e}"
    )
    print(
        f"measured matmul peak {peak:.0f} GFLOP/s; floor for one full iteration {1e3 * flops_full / peak / 1e9:.1f} ms; "
        f"peak RSS {rss:.0f} MiB"
        + (f"; peak CUDA {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if dev.type == "cuda" else "")
    )
    print(
        f"ratio (optimized with XE / reference): {ref_t / full_t:.2f}x; (early exit / reference): {ref_t / early_t:.2f}x"
    )


if __name__ == "__main__":
    main()
