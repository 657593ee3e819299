"""Many features in one run: K buffers sharing batched forward passes.

:func:`dream_many` runs :func:`featuredream.dream`'s loop for K latents of one SAE at once. Each feature
keeps everything its own single run has (config and seed, random generator, buffer, seen set, frontier,
patience and restarts); what is shared is the compute:

* the K parents' gradient passes are one forward + backward (:func:`batched_parent_signals`);
* all K features' children (and, at the start, all start pools) go to the model in one batch, sorted by
  length, and one SAE matmul scores the K latents (:class:`MultiLatentObjective`); each child is scored on
  its own feature and merged into its own feature's buffer only;
* the cascade (score to the objective's layer, finish XE only for children that could enter the buffer)
  uses each feature's own buffer bound;
* with ``prefix_cache`` the K parents run once with a key/value cache and each child runs only from its
  first token that differs from its own parent, in passes shared across features (:mod:`.multi_prefix`).

**Relation to K single runs.** Every random draw comes from the feature's own generator in the same
order as in ``dream``, so a feature's trajectory equals its single run with the same seed and config
whenever the batched float arithmetic rounds like the single one does; rows never interact, the only
difference is the rounding of differently shaped matmuls (~1e-6 relative). A rounding difference can
flip a discrete choice only at a near-exact tie (two GCG gradients or two buffer losses equal to ~1e-6),
after which that feature's trajectory diverges, as a single run's would between two devices. Tested on
tiny models (``tests/test_multi.py``). Differences by design: ``time_budget`` bounds the whole group (all
features stop together), and ``wall_time`` / per-iteration ``seconds`` are the group's time divided among
the features (amortized; the undivided figures are in ``environment["multi"]``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from tqdm.auto import tqdm

from .buffer import _Buffer, _Entry, _frontier_update
from .config import DreamConfig, default_children
from .evaluate import pad_right
from .fluency import resolve_xe_limit
from .interrupt import stop_requested
from .multi_objective import MultiLatentObjective, OwnedEvaluator, batched_parent_signals
from .optimizer import _banned_ids, _Canonicalizer, _check_devices, _make_children
from .results import DreamResult
from .starts import check_context, model_samples, start_pool
from .verify import finish_result

log = logging.getLogger(__name__)


@dataclass
class FeatureError:
    """A feature that could not be dreamed (e.g. every start prompt scored non-finite)."""

    feature: int
    message: str


@dataclass
class _Run:
    """One feature's state: what a single ``dream`` keeps in its locals."""

    k: int
    objective: object
    cfg: DreamConfig
    gen: torch.Generator
    buffer: _Buffer
    canon: _Canonicalizer
    seen: set = field(default_factory=set)
    front: torch.Tensor = field(default_factory=lambda: torch.empty(0, 2))
    front_ids: dict = field(default_factory=dict)
    stats: dict = field(default_factory=lambda: {"nonfinite": 0, "capped": 0, "evaluated": 0})
    history: list = field(default_factory=list)
    unused: list = field(default_factory=list)
    best: _Entry | None = None
    start: str = ""
    since_improved: int = 0
    restarts_left: int = 0
    stop_reason: str = "iterations"
    active: bool = True
    error: str | None = None


def dream_many(
    model: nn.Module,
    tokenizer,
    objective: MultiLatentObjective,
    config: DreamConfig | None = None,
    *,
    seeds: Sequence[int] | None = None,
    errors: str = "raise",
    on_interrupt: str = "finish",
) -> list[DreamResult | FeatureError]:
    """Dream each latent of ``objective`` (see module doc); one :class:`DreamResult` per latent, in order.

    ``seeds[k]`` (default: ``config.seed`` for all) is feature k's seed. ``errors='raise'``: a feature that
    cannot start raises ``ValueError`` naming it; ``'record'``: it yields a :class:`FeatureError` instead.
    Ctrl-C: ``on_interrupt='finish'`` stops the loop and returns the best so far of every feature
    (``interrupted=True``); ``'raise'`` re-raises at once (a sweep discards unfinished features anyway).
    """
    if errors not in ("raise", "record"):
        raise ValueError(f"errors={errors!r}: valid are 'raise', 'record'")
    if on_interrupt not in ("finish", "raise"):
        raise ValueError(f"on_interrupt={on_interrupt!r}: valid are 'finish', 'raise'")
    cfg = config or DreamConfig()
    K = len(objective)
    seeds = [cfg.seed] * K if seeds is None else list(seeds)
    if len(seeds) != K:
        raise ValueError(f"{len(seeds)} seeds for {K} latents: valid is one seed per latent")
    t0 = time.time()
    dev = next(model.parameters()).device
    torch.manual_seed(cfg.seed)
    if cfg.n_children is None:
        cfg = replace(cfg, n_children=default_children(dev.type))
    vocab = model.get_input_embeddings().weight.shape[0]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    _check_devices(objective, dev)
    banned = _banned_ids(tokenizer, vocab).to(dev)
    fast = dict(batch_size=cfg.batch_size, prefix_cache=cfg.prefix_cache)
    full = OwnedEvaluator(model, objective, need_xe=cfg.needs_xe, **fast)
    use_cascade = cfg.needs_xe and cfg.cascade and cfg.pareto is None
    scorer = OwnedEvaluator(model, objective, need_xe=False, **fast)
    penalties = [cfg.xe_regularization] + list(cfg.pareto or ())
    per = [cfg.buffer_size] + [1] * len(cfg.pareto or ())
    for single in objective.singles[:1]:
        check_context(cfg, single)
    runs = []
    for k, seed in enumerate(seeds):
        c = replace(cfg, seed=seed)
        runs.append(
            _Run(
                k,
                objective.singles[k],
                c,
                torch.Generator(device="cpu").manual_seed(seed),
                _Buffer(penalties, per, resolve_xe_limit(cfg.xe_max, objective.singles[k], cfg.max_tokens)),
                _Canonicalizer(tokenizer, cfg.min_tokens, cfg.max_tokens),
                restarts_left=cfg.restarts,
            )
        )

    def evaluate(jobs: list[tuple[_Run, list[torch.Tensor], list[str], float | None]], parents=None) -> dict:
        """All jobs' candidates in one batch; per run, the entries that may enter its buffer.

        ``parents``: ``{k: parent ids}`` the jobs' candidates were mutated from (for the prefix cache)."""
        seqs = [s for _, ss, _, _ in jobs for s in ss]
        if not seqs:
            return {}
        owner = torch.tensor([r.k for r, ss, _, _ in jobs for _ in ss], device=dev)
        bound = torch.tensor(
            [float("nan") if b is None else b for r, ss, _, b in jobs for _ in ss], dtype=torch.float64
        )
        ids, lengths = pad_right(seqs, pad_id, dev)
        if use_cascade:  # like dream: no bound -> full pass; else score first, finish the passing ones
            direct = torch.isnan(bound)
            scores = torch.full((len(seqs),), torch.nan)
            valid = torch.zeros(ids.shape, dtype=torch.bool, device=dev)
            go = direct.clone()
            casc = (~direct).nonzero().squeeze(1)
            if len(casc):
                c = casc.to(dev)
                first = scorer(ids[c], lengths[c], owner[c], parents)
                scores[casc], valid[c] = first.scores.cpu(), first.valid
                go[casc] = first.scores.double().cpu() > bound[casc]
            xe = torch.full((len(seqs),), torch.inf)
            fin = go.nonzero().squeeze(1)
            if len(fin):
                f = fin.to(dev)
                out = full(ids[f], lengths[f], owner[f], parents)
                xe[fin] = out.xe.cpu()
                d = direct[fin]
                scores[fin[d]] = out.scores.cpu()[d]
                valid[f[d.to(dev)]] = out.valid[d.to(dev)]
        else:
            out = full(ids, lengths, owner, parents)
            scores, xe, valid = out.scores.cpu(), out.xe.cpu(), out.valid
        entries: dict[int, list] = {}
        i = 0
        for r, ss, source, _ in jobs:
            j = i + len(ss)
            entries[r.k] = _ingest(r, cfg, ss, source, scores[i:j], xe[i:j], valid[i:j], lengths[i:j])
            i = j
        return entries

    # ---- start pools: one batch for all features (model samples made once per seed) ----
    samples: dict[int, list] = {}
    jobs = []
    for r in runs:
        pool = start_pool(model, tokenizer, r.objective, replace(r.cfg, n_start_samples=0), r.gen)
        if r.cfg.start in ("samples", "auto") and r.cfg.n_start_samples > 0:
            if r.cfg.seed not in samples:
                length = (cfg.min_tokens + cfg.max_tokens) // 2
                samples[r.cfg.seed] = model_samples(model, tokenizer, cfg.n_start_samples, length, r.cfg.seed)
            pool += [(s, "samples") for s in samples[r.cfg.seed]]
        canon_pool = r.canon([torch.tensor(ids, device=dev) for ids, _ in pool])
        seqs = [c for c in canon_pool if c is not None]
        sources = [src for c, (_, src) in zip(canon_pool, pool) if c is not None]
        if not seqs:
            r.error = (
                f"no start prompt has {cfg.min_tokens}..{cfg.max_tokens} tokens: give an init_prompt "
                "within the bounds"
            )
            continue
        r.seen.update(tuple(s.tolist()) for s in seqs)
        jobs.append((r, seqs, sources, None))
    start_entries = evaluate(jobs)
    for r in runs:
        if r.error is None and not start_entries.get(r.k):
            r.error = "every start prompt scored non-finite (norm cap on every position?)"
        if r.error is not None:
            r.active = False
            if errors == "raise":
                raise ValueError(f"feature {objective.latents[r.k]}: {r.error}")
            continue
        r.unused = sorted(start_entries[r.k], key=r.buffer.loss)
        r.buffer.merge(r.unused[: cfg.buffer_size])
        r.unused = r.unused[cfg.buffer_size :]
        r.best = r.buffer.entries[0]
        r.start = r.best.source
    log.info("dreaming %d features of %s together", K, objective.sae.name)

    interrupted = False
    loop_seconds = 0.0
    bar = tqdm(total=cfg.iters, desc=f"dream x{K}", unit="it", disable=not cfg.progress, dynamic_ncols=True)
    try:
        for it in range(cfg.iters):
            active = [r for r in runs if r.active]
            if not active:
                break
            t_it = time.time()
            _iteration(model, objective, active, it, cfg, banned, vocab, evaluate)
            dt = time.time() - t_it
            loop_seconds += dt
            for r in active:  # this iteration's time, shared among the features that ran it
                r.history[-1]["seconds"] = dt / len(active)
                r.history[-1]["elapsed"] = time.time() - t0
            bar.update()
            bar.set_postfix(active=sum(r.active for r in runs))
            if stop_requested():  # first Ctrl-C under graceful_sigint: stop cleanly after this iteration
                raise KeyboardInterrupt
            if cfg.time_budget is not None and time.time() - t0 >= cfg.time_budget:
                for r in runs:
                    if r.active:
                        r.active, r.stop_reason = False, "time budget"
                break
    except KeyboardInterrupt:
        if on_interrupt == "raise":
            raise
        interrupted = True
        for r in runs:
            if r.active:
                r.stop_reason = "interrupted"
        log.warning("interrupted: returning the best prompts so far")
    finally:
        bar.close()
    results: list[DreamResult | FeatureError] = []
    for r in runs:
        if r.error is not None:
            results.append(FeatureError(objective.latents[r.k], r.error))
            continue
        res = finish_result(
            model,
            tokenizer,
            r.objective,
            r.cfg,
            r.best,
            r.buffer,
            r.history,
            r.front,
            r.front_ids,
            counts={
                "evaluated": r.stats["evaluated"],
                "nonfinite": r.stats["nonfinite"],
                "dropped": r.canon.dropped,
                "capped": r.stats["capped"],
            },
            t0=t0,
            limit=r.buffer.limit,
            start=r.start,
            interrupted=interrupted and r.stop_reason == "interrupted",
            stop_reason=r.stop_reason,
        )
        results.append(res)
    total = time.time() - t0
    for res in results:
        if isinstance(res, DreamResult):
            res.wall_time = total / K
            res.environment["multi"] = {
                "features": K,
                "group_wall_time": total,
                "loop_seconds": loop_seconds,
                "cached_tokens": scorer.n_cached_tokens + full.n_cached_tokens,
            }
    return results


def _ingest(r: _Run, cfg: DreamConfig, seqs, sources, scores, xe, valid, lengths) -> list[_Entry]:
    """One feature's share of an evaluated batch -> its entries (what ``dream``'s ``evaluate`` does)."""
    bad = torch.isnan(scores) | torch.isposinf(scores)
    if cfg.needs_xe:
        bad |= torch.isnan(xe)
    r.stats["nonfinite"] += int(bad.sum())
    r.stats["evaluated"] += len(seqs)
    finite = torch.isfinite(scores) & ~bad & ~torch.isinf(xe)
    real = torch.arange(valid.shape[1], device=valid.device)[None] < lengths[:, None]
    r.stats["capped"] += int((~valid & real).sum())
    entries = [
        _Entry(s, float(sc), float(x), src)
        for s, sc, x, src, ok in zip(seqs, scores.tolist(), xe.tolist(), sources, finite.tolist())
        if ok
    ]
    if cfg.needs_xe:
        old = {tuple(p) for p in r.front.tolist()}
        r.front = _frontier_update(r.front, scores[finite], xe[finite])
        new = {tuple(p) for p in r.front.tolist()} - old
        for i in torch.nonzero(finite).squeeze(1).tolist():
            key = (float(scores[i]), float(xe[i]))
            if key in new:
                r.front_ids[key] = seqs[i].tolist()
    return entries


def _iteration(model, objective, active: list[_Run], it: int, cfg: DreamConfig, banned, vocab, evaluate):
    """One iteration of every active feature: batched parent passes, own children, one evaluation."""
    parents = [r.buffer.entries[it % len(r.buffer.entries)] for r in active]
    lams = []
    for r, p in zip(active, parents):
        lam = cfg.xe_regularization
        if r.buffer.limit is not None:
            lam += 1.0 if r.buffer.feasible(p) else 10.0
        lams.append(lam)
    sigs = batched_parent_signals(model, objective, [p.ids for p in parents], [r.k for r in active], lams)
    jobs, n_fresh = [], {}
    for r, parent, sig in zip(active, parents, sigs):
        kids, ops = _make_children(parent.ids, sig, r.cfg, r.gen, banned, vocab)
        fresh, op_of = [], []
        for kid, op in zip(r.canon(kids), ops):
            key = tuple(kid.tolist()) if kid is not None else None
            if key is not None and key not in r.seen:
                r.seen.add(key)
                fresh.append(kid)
                op_of.append(op)
        n_fresh[r.k] = len(fresh)
        if fresh:
            jobs.append((r, fresh, op_of, r.buffer.entry_bound()))
    entries = evaluate(jobs, {r.k: p.ids for r, p in zip(active, parents)})
    for r in active:
        new = entries.get(r.k, [])
        r.buffer.merge(new)
        top = min(new, key=r.buffer.loss) if new else None
        if r.buffer.loss(r.buffer.entries[0]) < r.buffer.loss(r.best):
            r.best, r.since_improved = r.buffer.entries[0], 0
        else:
            r.since_improved += 1
        r.history.append(
            {
                "iter": it,
                "operator": top.source if top else None,
                "child_activation": top.score if top else None,
                "child_xe": top.xe if top else None,
                "best_activation": r.best.score,
                "best_xe": r.best.xe,
                "best_loss": r.buffer.loss(r.best),
                "candidates": n_fresh[r.k],
                "seconds": 0.0,
            }
        )
        if cfg.patience is not None and r.since_improved >= cfg.patience:
            if r.restarts_left > 0 and r.unused:
                r.restarts_left -= 1
                r.since_improved = 0
                r.buffer.entries = []
                r.buffer.merge(r.unused[: cfg.buffer_size] + [r.best])
                r.unused = r.unused[cfg.buffer_size :]
                log.info("feature %d: restart at iteration %d", objective.latents[r.k], it)
            else:
                r.active, r.stop_reason = False, "patience"


def dream_features(
    model: nn.Module,
    tokenizer,
    sae,
    features: Sequence[int],
    config: DreamConfig | None = None,
    *,
    kind: str = "encoder",
    reduce: str = "last",
    norm_guard: bool | float = True,
    group_size: int = 32,
    errors: str = "raise",
    on_group: Callable[[list[int], list[DreamResult | FeatureError]], None] | None = None,
) -> list[DreamResult | FeatureError]:
    """Dream ``features`` of ``sae`` in groups of ``group_size`` (one :func:`dream_many` per group).

    ``on_group(group, results)`` is called as each group finishes (e.g. to write its files at once). Ctrl-C
    in a group's loop ends that group with its best so far (``interrupted=True``) and stops: the list then
    ends with that group. A Ctrl-C elsewhere propagates; groups already given to ``on_group`` are done.
    """
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size={group_size!r} is invalid: valid is an integer >= 1")
    out: list[DreamResult | FeatureError] = []
    for i in range(0, len(features), group_size):
        group = list(features[i : i + group_size])
        obj = MultiLatentObjective(sae, group, kind, reduce, norm_guard)
        results = dream_many(model, tokenizer, obj, config, errors=errors)
        out += results
        if on_group is not None:
            on_group(group, results)
        if any(isinstance(r, DreamResult) and r.interrupted for r in results):
            log.warning("interrupted: stopping after features %d..%d", group[0], group[-1])
            break
    return out
