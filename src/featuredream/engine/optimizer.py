"""The dreaming loop: a buffer of prompts mutated by GCG / sampled operators under a fluency constraint.

Each iteration takes the next parent from the buffer, computes its gradient and next-token
distribution in one forward + backward pass, makes ``n_children`` children mixing the four operators,
re-encodes them (so that every score is reproducible from its text), evaluates them in one batch, and
merges them into the buffer. Ranking (per penalty lambda):

* feasible prompts (XE <= ``xe_max``) by ``-activation + lambda * XE``;
* infeasible prompts after all feasible ones, by how far their XE exceeds ``xe_max`` (seed bug 9:
  an all-infinite buffer made the search walk at random);
* non-finite scores are dropped and counted, never chosen.

The parent stays in the buffer, so the best loss never gets worse. ``dream`` is the entry point.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import torch
from torch import nn
from tqdm.auto import tqdm

from .buffer import _Buffer, _Entry, _frontier_update
from .config import DreamConfig, default_children
from .evaluate import Evaluator, pad_right
from .fluency import resolve_xe_limit
from .interrupt import stop_requested
from .mutations import delete, gcg_swap, parent_signals, sample_insert, sample_swap
from .objectives import Objective
from .prefix_cache import PREFIX_MIN_CHILDREN
from .results import DreamResult
from .starts import check_context, start_pool
from .verify import finish_result

log = logging.getLogger(__name__)

_OPS = ("gcg_swap", "sample_swap", "sample_insert", "delete")


class _Canonicalizer:
    """Re-encode decoded children so that every candidate's ids equal the tokenization of its text."""

    def __init__(self, tokenizer, min_tokens: int, max_tokens: int):
        self.tok, self.lo, self.hi = tokenizer, min_tokens, max_tokens
        self.dropped = 0

    def __call__(self, children: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """Each child's canonical ids (its re-encoded text), or None when that falls outside the bounds."""
        texts = self.tok.batch_decode([c.tolist() for c in children], skip_special_tokens=False)
        enc = self.tok(texts, add_special_tokens=False)["input_ids"]
        # a second round trip must be a fixed point (clean-up of spaces can change a text twice)
        again = self.tok(self.tok.batch_decode(enc, skip_special_tokens=False), add_special_tokens=False)[
            "input_ids"
        ]
        out: list[torch.Tensor | None] = []
        for c, ids, ids2 in zip(children, enc, again):
            if not self.lo <= len(ids) <= self.hi or ids != ids2:
                self.dropped += 1
                out.append(None)
            else:
                out.append(torch.tensor(ids, device=c.device) if ids != c.tolist() else c)
        return out


def _check_devices(objective: Objective, dev: torch.device) -> None:
    sae = getattr(objective, "sae", None)
    if sae is not None and sae.sae.W_enc.device != dev:
        raise ValueError(
            f"the SAE is on {sae.sae.W_enc.device} but the model is on {dev}: load it with load_sae(..., model=model)"
        )


def _banned_ids(tokenizer, vocab: int) -> torch.Tensor:
    ids = set(tokenizer.all_special_ids)
    ids |= {i for i in range(len(tokenizer), vocab)}  # padding rows of the embedding matrix
    return torch.tensor(sorted(i for i in ids if i < vocab), dtype=torch.long)


def _make_children(parent, sig, cfg: DreamConfig, gen, banned, vocab) -> tuple[list[torch.Tensor], list[str]]:
    L = len(parent)
    p = torch.tensor(
        [cfg.p_gcg_swap, cfg.p_sample_swap, cfg.p_sample_insert, cfg.p_delete], dtype=torch.float
    )
    if L >= cfg.max_tokens:
        p[2] = 0
    if L <= cfg.min_tokens:
        p[3] = 0
    if p.sum() == 0:  # e.g. only deletes allowed but the parent is at min length
        p[1] = 1.0
    counts = torch.bincount(
        torch.multinomial(p, cfg.n_children, replacement=True, generator=gen), minlength=4
    )
    kids, ops = [], []
    for op, n in zip(_OPS, counts.tolist()):
        if n == 0:
            continue
        if op == "gcg_swap":
            c, _ = gcg_swap(parent, sig.grad, n, cfg.gcg_topk, gen, banned, sig.logprobs, cfg.gcg_fluency)
        elif op == "sample_swap":
            c, _ = sample_swap(parent, sig.logprobs, n, min(cfg.sample_k2, vocab - len(banned)), gen, banned)
        elif op == "sample_insert":
            c, _ = sample_insert(
                parent, sig.logprobs, n, min(cfg.sample_k2, vocab - len(banned)), gen, banned
            )
        else:
            c, _ = delete(parent, n, gen)
        kids.extend(c.unbind(0))
        ops.extend([op] * len(c))
    return kids, ops


def dream(
    model: nn.Module, tokenizer, objective: Objective, config: DreamConfig | None = None
) -> DreamResult:
    """Find a short, fluent prompt that maximizes ``objective``. See :class:`DreamConfig` for the knobs.

    Ctrl-C stops the loop and returns the best so far (``interrupted=True``).
    """
    cfg = config or DreamConfig()
    t0 = time.time()
    dev = next(model.parameters()).device
    if cfg.n_children is None:
        cfg = replace(cfg, n_children=default_children(dev.type))
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    vocab = model.get_input_embeddings().weight.shape[0]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # pad values are never read
    _check_devices(objective, dev)
    banned = _banned_ids(tokenizer, vocab).to(dev)
    fast = dict(batch_size=cfg.batch_size, prefix_cache=cfg.prefix_cache)
    evaluator = Evaluator(model, objective, need_xe=cfg.needs_xe, **fast)
    # The cascade skips XE for children that cannot enter the buffer; a Pareto frontier needs every point.
    use_cascade = cfg.needs_xe and cfg.cascade and cfg.pareto is None
    scorer = Evaluator(model, objective, need_xe=False, **fast) if use_cascade else None
    canon = _Canonicalizer(tokenizer, cfg.min_tokens, cfg.max_tokens)
    penalties = [cfg.xe_regularization] + list(cfg.pareto or ())
    per = [cfg.buffer_size] + [1] * len(cfg.pareto or ())
    check_context(cfg, objective)
    limit = resolve_xe_limit(cfg.xe_max, objective, cfg.max_tokens)
    buffer = _Buffer(penalties, per, limit)
    seen: set[tuple[int, ...]] = set()
    front = torch.empty(0, 2)
    front_ids: dict[tuple[float, float], list[int]] = {}
    stats = {"nonfinite": 0, "capped": 0, "finished": 0}

    def run(ids: torch.Tensor, lengths: torch.Tensor, bound: float | None, parent: torch.Tensor | None):
        """Fast path, with the cascade when a buffer bound exists (XE = +inf for children cut off)."""
        if scorer is None or bound is None:
            return evaluator(ids, lengths, parent=parent)
        first = scorer(ids, lengths, parent=parent)
        go = (first.scores.double() > bound).nonzero().squeeze(1)
        xe = torch.full_like(first.scores, torch.inf)
        stats["finished"] += len(go)
        if len(go):
            xe[go] = evaluator(ids[go], lengths[go], parent=parent).xe
        return first._replace(xe=xe)

    def evaluate(seqs: list[torch.Tensor], source: list[str], bound: float | None = None, parent=None):
        nonlocal front
        ids, lengths = pad_right(seqs, pad_id, dev)
        out = run(ids, lengths, bound, parent)
        bad = torch.isnan(out.scores) | torch.isposinf(out.scores)
        if cfg.needs_xe:
            bad |= torch.isnan(out.xe)
        stats["nonfinite"] += int(bad.sum())
        # -inf scores (norm guard) and children the cascade cut off (XE +inf) never enter
        finite = torch.isfinite(out.scores) & ~bad & ~torch.isinf(out.xe)
        real = torch.arange(ids.shape[1], device=dev)[None] < lengths[:, None]
        stats["capped"] += int((~out.valid & real).sum())
        scores, xe = out.scores.cpu(), out.xe.cpu()
        entries = [
            _Entry(s, float(sc), float(x), src)
            for s, sc, x, src, ok in zip(seqs, scores.tolist(), xe.tolist(), source, finite.tolist())
            if ok
        ]
        if cfg.needs_xe:
            old = {tuple(p) for p in front.tolist()}
            front = _frontier_update(front, scores[finite.cpu()], xe[finite.cpu()])
            new = {tuple(p) for p in front.tolist()} - old
            for i in torch.nonzero(finite.cpu()).squeeze(1).tolist():
                key = (float(scores[i]), float(xe[i]))
                if key in new:
                    front_ids[key] = seqs[i].tolist()
        return entries, scores, xe

    # ---- start pool ----
    pool = start_pool(model, tokenizer, objective, cfg, gen)
    canon_pool = canon([torch.tensor(ids, device=dev) for ids, _ in pool])
    seqs = [c for c in canon_pool if c is not None]
    sources = [src for c, (_, src) in zip(canon_pool, pool) if c is not None]
    if not seqs:
        raise ValueError(
            f"no start prompt has {cfg.min_tokens}..{cfg.max_tokens} tokens: give an init_prompt within the bounds"
        )
    for s in seqs:
        seen.add(tuple(s.tolist()))
    start_entries, _, _ = evaluate(seqs, sources)
    if not start_entries:
        raise ValueError("every start prompt scored non-finite (norm cap on every position?)")
    unused_starts = sorted(start_entries, key=buffer.loss)
    buffer.merge(unused_starts[: cfg.buffer_size])
    unused_starts = unused_starts[cfg.buffer_size :]
    best = buffer.entries[0]
    start_source = best.source
    history: list[dict] = []
    since_improved, restarts_left = 0, cfg.restarts
    stop_reason = "iterations"
    interrupted = False
    log.info(
        "dreaming %s: %d start prompts, best start from %s", objective.name, len(start_entries), start_source
    )
    bar = tqdm(total=cfg.iters, desc="dream", unit="it", disable=not cfg.progress, dynamic_ncols=True)
    try:
        for it in range(cfg.iters):
            t_it = time.time()
            parent = buffer.entries[it % len(buffer.entries)]
            lam = cfg.xe_regularization
            if limit is not None:
                lam += 1.0 if buffer.feasible(parent) else 10.0
            sig = parent_signals(model, objective, parent.ids, lam)
            kids, ops = _make_children(parent.ids, sig, cfg, gen, banned, vocab)
            fresh, op_of = [], []
            for k, op in zip(canon(kids), ops):
                key = tuple(k.tolist()) if k is not None else None
                if key is not None and key not in seen:
                    seen.add(key)
                    fresh.append(k)
                    op_of.append(op)
            cache_parent = parent.ids if len(fresh) >= PREFIX_MIN_CHILDREN.get(dev.type, 0) else None
            entries, _, _ = (
                evaluate(fresh, op_of, buffer.entry_bound(), cache_parent) if fresh else ([], None, None)
            )
            buffer.merge(entries)
            top = min(entries, key=buffer.loss) if entries else None
            if buffer.loss(buffer.entries[0]) < buffer.loss(best):
                best, since_improved = buffer.entries[0], 0
            else:
                since_improved += 1
            history.append(
                {
                    "iter": it,
                    "operator": top.source if top else None,
                    "child_activation": top.score if top else None,
                    "child_xe": top.xe if top else None,
                    "best_activation": best.score,
                    "best_xe": best.xe,
                    "best_loss": buffer.loss(best),
                    "best_feasible": buffer.feasible(best),
                    "best_tokens": len(best.ids),
                    "candidates": len(fresh),
                    "seconds": time.time() - t_it,
                    "elapsed": time.time() - t0,
                }
            )
            bar.update()
            bar.set_postfix(act=f"{best.score:.2f}", xe=f"{best.xe:.2f}")
            if stop_requested():  # first Ctrl-C under graceful_sigint: stop cleanly after this iteration
                interrupted, stop_reason = True, "interrupted"
                log.warning("interrupted: returning the best prompt so far")
                break
            if cfg.time_budget is not None and time.time() - t0 >= cfg.time_budget:
                stop_reason = "time budget"
                break
            if cfg.patience is not None and since_improved >= cfg.patience:
                if restarts_left > 0 and unused_starts:
                    restarts_left -= 1
                    since_improved = 0
                    buffer.entries = []
                    buffer.merge(unused_starts[: cfg.buffer_size] + [best])
                    unused_starts = unused_starts[cfg.buffer_size :]
                    log.info("restart at iteration %d", it)
                else:
                    stop_reason = "patience"
                    break
    except KeyboardInterrupt:
        interrupted, stop_reason = True, "interrupted"
        log.warning("interrupted: returning the best prompt so far")
    finally:
        bar.close()
    return finish_result(
        model,
        tokenizer,
        objective,
        cfg,
        best,
        buffer,
        history,
        front,
        front_ids,
        counts={
            # each candidate once: the cascade's finished children went through both evaluators
            "evaluated": evaluator.n_evaluated + (scorer.n_evaluated - stats["finished"] if scorer else 0),
            "nonfinite": stats["nonfinite"],
            "dropped": canon.dropped,
            "capped": stats["capped"],
        },
        t0=t0,
        limit=limit,
        start=start_source,
        interrupted=interrupted,
        stop_reason=stop_reason,
    )
