"""Throughput: the optimized evaluator against a plain reference evaluator, same machine, same run.

    python benchmarks/throughput.py [--model NAME] [--children 128] [--tokens 16] [--iters 5]
        [--loop-children N] [--warm-iters 5] [--xe-max p90] [--device cpu] [--dtype float32]
        [--threads N] [--wait-load 1.0] [--out benchmarks/throughput.json]

The reference is what published dreaming code does (seed 003): decode candidates to strings, re-tokenize
them with padding every iteration, run the full model in float32 with an attention mask, copy logits to
the host, and compute the feature and XE there.

Part 1, fixed batches (``--children`` random one-token swaps of a ``--tokens``-token parent): the
reference, the optimized :class:`Evaluator` with XE for every child (ids on the device, right-padded
without a mask) and without XE (early exit at the objective's layer), on the same batches.

Part 2, the cascade as the optimizer runs it: a :class:`DreamLoop` (default ``DreamConfig``: start
``auto``, ``xe_max`` p90, its children per iteration) is started and run ``--warm-iters`` iterations so
its buffer holds real prompts; then ``--iters + 1`` batches of children are made by the loop's own
``signals`` / ``children`` from its buffer's parents, and timed through ``DreamLoop.evaluate`` with the
buffer's real entry bound (children scored to the objective's layer, XE finished only for those above the
bound; the prefix cache when the loop would use it), through the same call with the cascade off (XE for
every child), and through the reference. It counts the children the cascade finished and checks that
both give the same entries that can enter the buffer.

Prints candidates/s, ms per batch, % of the peak (CPU: the fp32 matmul rate measured in this run; GPU:
the datasheet's dense peak for ``torch.cuda.get_device_name()`` and the dtype, none for an unknown
device), top-1 agreement, peak memory and, last, the ratios; writes everything to ``--out``.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from common import (
    add_run_args,
    begin_run,
    corpus_xe_quantile,
    device_peak_tflops,
    end_run,
    machine_info,
    write_json,
)  # noqa: E402

from featuredream import DirectionObjective, DreamConfig, SAEEncoder, load_model, load_sae  # noqa: E402
from featuredream.engine.loop import DreamLoop  # noqa: E402
from featuredream.evaluation.evaluate import Evaluator  # noqa: E402
from featuredream.evaluation.prefix_cache import PREFIX_MIN_CHILDREN  # noqa: E402
from featuredream.models.loading import text_config  # noqa: E402
from featuredream.models.sites import Site, run_sites  # noqa: E402
from featuredream.models.xe import sequence_xe  # noqa: E402
from featuredream.objectives.group import Single  # noqa: E402


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
def reference_iteration(model, tok, objective, kids):
    """Seed-003 style: strings, padded re-tokenization, full fp32 forward with mask, host-side scoring.
    ``kids``: ``[n, L]`` ids or a list of 1-D id tensors of any lengths."""
    texts = tok.batch_decode([k.tolist() for k in kids])
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


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(fns: list, batches: list, dev: torch.device) -> list[tuple[float, list, list]]:
    """Each of ``fns`` on ``batches[1:]`` after a warm-up on ``batches[0]``, interleaved batch by batch (so a
    burst of other work on the machine falls on every path alike): per function, (mean seconds per batch,
    outputs, seconds per batch)."""
    for fn in fns:
        fn(batches[0])
    secs: list[list[float]] = [[] for _ in fns]
    outs: list[list] = [[] for _ in fns]
    for b in batches[1:]:
        for i, fn in enumerate(fns):
            sync(dev)
            t = time.perf_counter()
            outs[i].append(fn(b))
            sync(dev)
            secs[i].append(time.perf_counter() - t)
    return [(sum(s) / len(s), o, s) for s, o in zip(secs, outs)]


def loop_batches(model, tok, objective, xe_max, n_children, warm_iters: int, n_batches: int):
    """A default-config :class:`DreamLoop` on ``objective``, started and run ``warm_iters`` iterations,
    and ``n_batches`` evaluation jobs made by its own signal / children steps from its buffer's parents
    (the buffer is not updated between them): ``(loop, [(jobs, cache_parents)])``."""
    cfg = DreamConfig(xe_max=xe_max, n_children=n_children, progress=False, patience=None, iters=warm_iters)
    loop = DreamLoop(model, tok, Single(objective), cfg)
    loop.start()
    for it in range(warm_iters):
        loop.step(it)
    r, out = loop.runs[0], []
    for i in range(n_batches):
        parent = r.buffer.entries[(warm_iters + i) % len(r.buffer.entries)]
        sig = loop.signals([r], [parent])[0]
        kids, ops = loop.children(r, parent, sig)
        cache = {r.k: parent.ids} if len(kids) >= PREFIX_MIN_CHILDREN.get(loop.dev.type, 0) else {}
        out.append(([(r, kids, ops, r.buffer.entry_bound())], cache))
    return loop, out


def time_cascade(loop, model, tok, objective, batches, dev):
    """The reference, the cascade and the cascade off, interleaved on the loop's batches: their ``timed``
    results and the children the cascade finished per timed batch."""
    finished = []

    def cascade(b):
        loop.cascade = True
        before = loop.full.n_evaluated
        out = loop.evaluate(*b)
        finished.append(loop.full.n_evaluated - before)
        return out

    def cascade_off(b):
        loop.cascade = False
        return loop.evaluate(*b)

    timings = timed(
        [lambda b: reference_iteration(model, tok, objective, b[0][0][1]), cascade, cascade_off], batches, dev
    )
    return timings, finished[1:]  # the warm-up batch


def entering(entries, bound):
    """Entries that can enter the buffer: activation above the bound (all, without a bound)."""
    return {tuple(e.ids.tolist()): (e.score, e.xe) for e in entries if bound is None or e.score > bound}


def compare_entering(casc_out, full_out, bounds, k) -> tuple[bool, float]:
    """Whether the cascade and the cascade off give the same entries that can enter the buffer, and the
    largest score / XE difference between them."""
    same, max_diff = True, 0.0
    for c, f, bound in zip(casc_out, full_out, bounds):
        a, b = entering(c[k], bound), entering(f[k], bound)
        same &= a.keys() == b.keys()
        for key in a.keys() & b.keys():
            max_diff = max(max_diff, abs(a[key][0] - b[key][0]), abs(a[key][1] - b[key][1]))
    return same, max_diff


def top1_on_loop(ref_out, full_out, batches, k) -> int:
    """Batches where the reference and the cascade off pick the same best child."""
    return sum(
        int(max(f[k], key=lambda e: e.score).ids.tolist() == kids[int(torch.argmax(rs))].tolist())
        for (rs, _), f, (jobs, _) in zip(ref_out, full_out, batches)
        for kids in [jobs[0][1]]
        if f[k]
    )


def cascade_config(loop, args, dev) -> dict:
    """The loop's settings for part 2."""
    return {
        "n_children": loop.cfg.n_children,
        "xe_max": str(args.xe_max),
        "start": loop.cfg.start,
        "warm_iters": args.warm_iters,
        "prefix_cache": loop.cfg.prefix_cache,
        "prefix_min_children": PREFIX_MIN_CHILDREN.get(dev.type, 0),
    }


def cascade_speed(per_batch: float, ref, casc, full) -> dict:
    """Part 2's times, candidates/s and ratios (``per_batch``: mean children per batch)."""
    (ref_t, _, ref_s), (casc_t, _, casc_s), (full_t, _, full_s) = ref, casc, full
    return {
        "ms_per_batch": {
            "reference": [1e3 * x for x in ref_s],
            "cascade": [1e3 * x for x in casc_s],
            "cascade_off": [1e3 * x for x in full_s],
        },
        "ms_reference": 1e3 * ref_t,
        "ms_cascade_off": 1e3 * full_t,
        "ms_cascade": 1e3 * casc_t,
        "cand_per_s_reference": per_batch / ref_t,
        "cand_per_s_cascade_off": per_batch / full_t,
        "cand_per_s_cascade": per_batch / casc_t,
        "ratio_cascade_vs_reference": ref_t / casc_t,
        "ratio_cascade_vs_cascade_off": full_t / casc_t,
        "ratio_cascade_off_vs_reference": ref_t / full_t,
    }


def measure_cascade(model, tok, objective, args, dev) -> dict:
    """Part 2: the cascade through ``DreamLoop.evaluate`` with the buffer's bound, against the same call with
    the cascade off and against the reference, on the loop's own children."""
    loop, batches = loop_batches(
        model, tok, objective, args.xe_max, args.loop_children, args.warm_iters, args.iters + 1
    )
    run = loop.runs[0]
    n_kids = [len(jobs[0][1]) for jobs, _ in batches[1:]]
    tokens = [sum(len(k) for k in jobs[0][1]) for jobs, _ in batches[1:]]
    bounds = [jobs[0][3] for jobs, _ in batches[1:]]
    (ref, casc, full), finished = time_cascade(loop, model, tok, objective, batches, dev)
    same, max_diff = compare_entering(casc[1], full[1], bounds, run.k)
    agree = top1_on_loop(ref[1], full[1], batches[1:], run.k)
    n = sum(n_kids)
    return {
        "config": cascade_config(loop, args, dev),
        "batches": len(n_kids),
        "children_per_batch": n_kids,
        "mean_tokens_per_child": sum(tokens) / max(n, 1),
        "batches_with_bound": sum(b is not None for b in bounds),
        "batches_with_prefix_cache": sum(bool(c) for _, c in batches[1:]),
        "bounds": bounds,
        "finished_per_batch": finished,
        "finished": sum(finished),
        "children": n,
        "finished_share": sum(finished) / max(n, 1),
        "same_entering_entries": bool(same),
        "max_diff_entering_score_xe": max_diff,
        "top1_agreement_reference_vs_cascade_off": agree / len(n_kids),
        **cascade_speed(n / len(n_kids), ref, casc, full),
    }


def parse_args() -> argparse.Namespace:
    """The command-line options."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--children", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--feature", type=int, default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--loop-children", type=int, default=None, help="default: DreamConfig's on the device")
    ap.add_argument("--warm-iters", type=int, default=5, help="loop iterations before the cascade batches")
    ap.add_argument("--xe-max", default="p90", help="the loop's ceiling: pNN (SAE's table) or a number")
    ap.add_argument("--no-cascade", action="store_true", help="skip part 2 (the loop's cascade)")
    add_run_args(ap, "throughput")
    return ap.parse_args()


def pick_objective(model, tok, args, cfg):
    """``(objective, SAE feature or None)``; settles ``args.xe_max`` (a number unless it names the SAE's table)."""
    if args.model is None:
        sae = load_sae("default", model=model)
        feature = args.feature if args.feature is not None else int(sae.stats.live_latents()[0])
        objective = SAEEncoder(sae, feature)
    else:
        feature = None
        layer = cfg.num_hidden_layers // 2
        objective = DirectionObjective(
            Site("resid_post", layer),
            torch.randn(cfg.hidden_size, generator=torch.Generator().manual_seed(0)),
        )
        if args.xe_max.startswith("p"):  # no SAE table: the corpus windows' quantile
            args.xe_max = corpus_xe_quantile(model, tok, length=args.tokens, q=float(args.xe_max[1:]) / 100)
    if not str(args.xe_max).startswith("p"):
        args.xe_max = float(args.xe_max)
    return objective, feature


def measure_fixed(model, tok, objective, args, batches, dev):
    """Part 1: the reference and the optimized evaluator with and without XE, interleaved on fixed batches."""
    lengths = torch.full((args.children,), args.tokens, device=dev)
    full = Evaluator(model, objective, need_xe=True, batch_size=args.children)
    early = Evaluator(model, objective, need_xe=False, batch_size=args.children)
    return timed(
        [
            lambda b: reference_iteration(model, tok, objective, b),
            lambda b: full(b.to(dev), lengths),
            lambda b: early(b.to(dev), lengths),
        ],
        batches,
        dev,
    )


def hardware_peak(dev, dtype, peak_before) -> tuple[float | None, str]:
    """The peak GFLOP/s the % of peak is taken against, and where it comes from."""
    if dev.type == "cpu":
        peak = max(peak_before, cpu_peak_gflops())
        peak_source = (
            "fp32 2048x2048 matmul measured in this run (the larger of before and after the timings)"
        )
    else:
        tflops = device_peak_tflops(torch.cuda.get_device_name(dev), dtype)
        peak = None if tflops is None else 1e3 * tflops
        peak_source = "datasheet dense peak for the device name and dtype (common.DEVICE_PEAK_TFLOPS)"
    return peak, peak_source


def agreement(ref_out, outs) -> float:
    """Fraction of batches where both evaluators pick the same best candidate."""
    return sum(int(torch.argmax(r[0]) == torch.argmax(o.scores.cpu())) for r, o in zip(ref_out, outs)) / len(
        outs
    )


PATHS = (
    ("reference", "reference (strings, fp32, mask)"),
    ("full", "optimized, with XE (full)"),
    ("early", "optimized, no XE (early exit)"),
)


def path_rows(args, timings, flops: tuple[float, float], peak) -> list[dict]:
    """Print and return part 1's row per path: ms per batch, candidates/s, GFLOP/s and % of peak."""
    flops_full, flops_early = flops
    rows = []
    print(f"{'path':34s} {'ms/iter':>9s} {'cand/s':>9s} {'GFLOP/s':>9s} {'% of peak':>9s}")
    for (key, name), (t, _, per), fl in zip(PATHS, timings, (flops_full, flops_full, flops_early)):
        gflops = fl / t / 1e9
        pct = None if peak is None else 100 * gflops / peak
        rows.append(
            dict(
                path=key,
                name=name,
                ms=1e3 * t,
                ms_per_batch=[1e3 * x for x in per],
                cand_per_s=args.children / t,
                gflop=fl / 1e9,
                gflop_per_s=gflops,
                pct_peak=pct,
            )
        )
        print(
            f"{name:34s} {1e3 * t:9.1f} {args.children / t:9.0f} {gflops:9.1f} "
            + ("        -" if pct is None else f"{pct:8.1f}%")
        )
    return rows


def print_peak(peak, peak_source: str, flops_full: float, dev, dtype, rss: float, cuda_mib) -> None:
    """Print the peak, the floor for one full iteration and the peak memory."""
    print(
        (
            f"peak {peak:.0f} GFLOP/s ({peak_source}); floor for one full iteration "
            f"{1e3 * flops_full / peak / 1e9:.1f} ms; "
            if peak is not None
            else f"no peak known for {torch.cuda.get_device_name(dev)} in {dtype}: no % of peak; "
        )
        + f"peak RSS {rss:.0f} MiB"
        + (f"; peak CUDA {cuda_mib:.0f} MiB" if cuda_mib is not None else "")
    )


def fixed_report(args, dev, dtype, cfg, layer: int, timings, flops, peak, peak_source: str) -> dict:
    """Print part 1's table, agreement and memory; return their JSON fields."""
    (_, ref_out, _), (_, full_out, _), (_, early_out, _) = timings
    max_err = max(float((rs - o.scores.cpu()).abs().max()) for (rs, _), o in zip(ref_out, full_out))
    max_xe_err = max(float((rx - o.xe.cpu()).abs().max()) for (_, rx), o in zip(ref_out, full_out))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"model {args.model or 'default'} on {dev} ({dtype}); "
        f"{args.children} children x {args.tokens} tokens; objective at layer {layer} of {cfg.num_hidden_layers}"
    )
    rows = path_rows(args, timings, flops, peak)
    top1 = {"full": agreement(ref_out, full_out), "early": agreement(ref_out, early_out)}
    print(
        f"top-1 agreement with reference: with XE {top1['full']:.2f}, early exit {top1['early']:.2f}; "
        f"max |score diff| {max_err:.2e}, max |XE diff| {max_xe_err:.2e}"
    )
    cuda_mib = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None
    print_peak(peak, peak_source, flops[0], dev, dtype, rss, cuda_mib)
    return {
        "rows": rows,
        "top1_agreement": top1,
        "max_score_diff": max_err,
        "max_xe_diff": max_xe_err,
        "peak_rss_mib": rss,
        "peak_cuda_mib": cuda_mib,
    }


def print_cascade(c: dict) -> None:
    """Print part 2's summary."""
    print(
        f"the loop's cascade ({c['config']['n_children']} children per iteration, xe_max {c['config']['xe_max']}, "
        f"{c['batches']} batches of {min(c['children_per_batch'])}-{max(c['children_per_batch'])} children, "
        f"{c['mean_tokens_per_child']:.1f} tokens each, bound in {c['batches_with_bound']}, prefix cache in "
        f"{c['batches_with_prefix_cache']}):"
    )
    for name, key in (
        ("reference on the loop's children", "reference"),
        ("DreamLoop.evaluate, cascade off", "cascade_off"),
        ("DreamLoop.evaluate, cascade on", "cascade"),
    ):
        print(f"  {name:34s} {c['ms_' + key]:9.1f} ms/batch {c['cand_per_s_' + key]:9.0f} cand/s")
    print(
        f"  the cascade finished {c['finished']}/{c['children']} children ({100 * c['finished_share']:.0f}%); "
        f"same entries that can enter the buffer as cascade off: {c['same_entering_entries']} "
        f"(max diff {c['max_diff_entering_score_xe']:.1e}); top-1 reference vs cascade off "
        f"{c['top1_agreement_reference_vs_cascade_off']:.2f}"
    )


def ratios_of(timings, cascade) -> dict:
    """The speed-up ratios written to the JSON."""
    (ref_t, _, _), (full_t, _, _), (early_t, _, _) = timings
    ratios = {"early_vs_reference": ref_t / early_t, "full_vs_reference": ref_t / full_t}
    if cascade is not None:
        ratios["loop_cascade_vs_reference"] = cascade["ratio_cascade_vs_reference"]
        ratios["loop_cascade_vs_cascade_off"] = cascade["ratio_cascade_vs_cascade_off"]
    return ratios


def final_message(timings, cascade) -> str:
    """The last line: the ratios."""
    (ref_t, _, _), (full_t, _, _), (early_t, _, _) = timings
    msg = f"ratio (optimized with XE / reference): {ref_t / full_t:.2f}x; (early exit / reference): {ref_t / early_t:.2f}x"
    if cascade is not None:
        msg += (
            f"; the loop's cascade / reference on its children: {cascade['ratio_cascade_vs_reference']:.2f}x "
            f"(/ cascade off: {cascade['ratio_cascade_vs_cascade_off']:.2f}x)"
        )
    return msg


def main() -> None:
    """Part 1 on fixed batches and part 2 on the loop's cascade; print the summary and write ``--out``."""
    args = parse_args()
    idle, monitor = begin_run(args)
    model, tok = load_model(args.model, device=args.device, dtype=args.dtype)
    dev = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    cfg = text_config(model)
    objective, feature = pick_objective(model, tok, args, cfg)
    batches = candidate_batches(tok, args.iters + 1, args.children, args.tokens, seed=0)
    n_params = sum(p.numel() for p in model.parameters())
    n_embed = model.get_input_embeddings().weight.numel()
    layer = max(s.layer for s in objective.sites)
    per_layer = (n_params - n_embed) / cfg.num_hidden_layers  # tied embeddings: the head reuses n_embed

    peak_before = cpu_peak_gflops() if dev.type == "cpu" else None
    timings = measure_fixed(model, tok, objective, args, batches, dev)
    cascade = None if args.no_cascade else measure_cascade(model, tok, objective, args, dev)
    peak, peak_source = hardware_peak(dev, dtype, peak_before)

    tokens = args.children * args.tokens
    flops_full = 2 * tokens * (per_layer * cfg.num_hidden_layers + n_embed)
    flops_early = 2 * tokens * per_layer * (layer + 1)
    report = fixed_report(args, dev, dtype, cfg, layer, timings, (flops_full, flops_early), peak, peak_source)
    if cascade is not None:
        print_cascade(cascade)
    run = end_run(idle, monitor)
    ratios = ratios_of(timings, cascade)
    write_json(
        args.out,
        {
            "args": vars(args),
            "machine": machine_info(dev, dtype),
            **run,
            "feature": feature,
            "objective_layer": layer,
            "num_layers": cfg.num_hidden_layers,
            "peak_gflop_per_s": peak,
            "peak_source": peak_source,
            "cpu_peak_gflop_per_s_before": peak_before,
            **report,
            "cascade": cascade,
            "ratios": ratios,
        },
    )
    print(final_message(timings, cascade))


if __name__ == "__main__":
    main()
