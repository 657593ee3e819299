"""The dreaming loop, for K >= 1 features at once (a single dream is K = 1).

:class:`DreamLoop` holds the state (one :class:`~.state.FeatureRun` per feature, the shared evaluators)
and runs in small named steps: :meth:`~DreamLoop.start` (start pools), then per iteration
:meth:`~DreamLoop.step` = :meth:`~DreamLoop.signals` (the K parents' gradient passes as one forward +
backward), :meth:`~DreamLoop.children` (each feature's own children, re-encoded, unseen),
:meth:`~DreamLoop.evaluate` (every feature's children in one batch; the cascade scores to the objective's
layer first and finishes XE only for children that could enter their own buffer; the prefix cache runs
each child from its first token that differs from its own parent) and :meth:`~DreamLoop.update` (buffer,
best and history); between iterations :meth:`~DreamLoop.patience` (restarts or stops), the time budget and
Ctrl-C; and finally :meth:`~DreamLoop.finish` (verification by the
reference path and the :class:`~.results.DreamResult`).

Ranking (per penalty lambda; :mod:`.buffer`): feasible prompts (XE <= ``xe_max``) by ``-activation +
lambda * XE``; infeasible prompts after all feasible ones, by how far their XE exceeds ``xe_max`` (seed
bug 9); non-finite scores are dropped and counted, never chosen. The parent stays in the buffer, so the
best loss never gets worse.

**K features and K single runs.** Each feature keeps everything its own single run has (config and
seed, random generator, buffer, seen set, frontier, patience and restarts); what is shared is compute.
Every random draw comes from the feature's own generator in the same order as in a single run, so a
feature's trajectory equals its single run with the same seed whenever the batched float arithmetic
rounds alike (rows never interact; differently shaped matmuls differ by ~1e-6 relative, which can flip a
discrete choice only at a near-exact tie). Differences by design: ``time_budget`` bounds the whole group,
and per-iteration ``seconds`` is the group's time divided among the features that ran it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import torch
from torch import nn
from tqdm.auto import tqdm

from ..evaluation.evaluate import EvalOutput, Evaluator, cascade
from ..evaluation.parent_grads import batched_parent_signals
from ..evaluation.prefix_cache import PREFIX_MIN_CHILDREN
from ..models.padding import pad
from ..models.tl import as_model
from ..objectives.dataset import stats_examples
from ..objectives.group import ObjectiveGroup, Single, check_device
from ..objectives.kinds import resolve_norm_caps
from ..text.readability import readability
from .buffer import Entry
from .children import banned_ids, make_children
from .clock import Clock, prepare_stores
from .config import DreamConfig, default_children
from .finish import candidates, finish_result
from .interrupt import stop_requested
from .loop_start import StartPhase
from .mutations import head_trims
from .records import HistoryRow, MultiRun
from .results import FeatureError
from .starts import check_context
from .state import FeatureRun, Job, new_run

log = logging.getLogger(__name__)


class DreamLoop(StartPhase):
    """The engine: ``DreamLoop(model, tokenizer, group, config, seeds).run()`` -> one result per feature.

    ``seeds[k]`` (default: ``config.seed`` for all) is feature k's seed.
    """

    def __init__(self, model: nn.Module, tokenizer, group: ObjectiveGroup, config: DreamConfig, seeds=None):
        model = as_model(model, tokenizer)  # TransformerLens: its adapter (lm.tl); a BOS model: lm.bos
        K = len(group)
        seeds = [config.seed] * K if seeds is None else list(seeds)
        if len(seeds) != K:
            raise ValueError(f"{len(seeds)} seeds for {K} latents: valid is one seed per latent")
        self.model, self.tok, self.group = model, tokenizer, group
        self.dev = next(model.parameters()).device
        self.clock = Clock(config.time_budget)  # restarted when the search starts: setup is outside it
        torch.manual_seed(config.seed)
        if config.n_children is None:
            config = replace(config, n_children=default_children(self.dev.type))
        self.cfg = cfg = config
        self.vocab = model.get_input_embeddings().weight.shape[0]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # never read
        for single in group.singles:
            check_device(single, self.dev)
            check_context(cfg, single)
        with self.clock.timed("norm cap of the objective's site (3x its median norm, cached)"):
            resolve_norm_caps(model, tokenizer, group)  # the site's cap for objectives without a recorded one
        self.banned = banned_ids(tokenizer, self.vocab).to(self.dev)
        fast = dict(batch_size=cfg.batch_size, prefix_cache=cfg.prefix_cache)
        self.full = Evaluator(model, group, need_xe=cfg.needs_xe, **fast)
        # The cascade skips XE for children that cannot enter the buffer; a Pareto frontier needs every point.
        self.cascade = cfg.needs_xe and cfg.cascade and cfg.pareto is None
        self.scorer = Evaluator(model, group, need_xe=False, **fast)
        self._xe_table: dict | None = None
        self.readability = None
        if cfg.readable:
            with self.clock.timed("the model's readability reference on prose (cached)"):
                self.readability = readability(model, tokenizer)
        self.runs = [self._new_run(k, seed) for k, seed in enumerate(seeds)]
        self.interrupted = False
        self.loop_seconds = 0.0
        self._samples: dict[tuple[int, int, int], list[list[int]]] = {}  # per (seed, number, length)

    def _model_xe_table(self) -> dict:
        """The model's natural-text XE table on the prose reference (computed once per model, cached)."""
        from ..models.identity import model_fingerprint
        from ..text.xe_table import reference_xe_table

        if self._xe_table is None:
            with self.clock.timed("the model's natural-text XE table (cached)"):
                self._xe_table = reference_xe_table(self.model, self.tok, model_fingerprint(self.model))
        return self._xe_table

    def _new_run(self, k: int, seed: int) -> FeatureRun:
        return new_run(self.tok, self.group, replace(self.cfg, seed=seed), k, self._model_xe_table)

    # ---- one iteration ----
    def step(self, it: int) -> None:
        """One iteration of every active feature: parent signals, children, one evaluation, update."""
        active = [r for r in self.runs if r.active]
        t_it = time.time()
        parents = [r.parent(it) for r in active]
        sigs = self.signals(active, parents)
        jobs, n_fresh = [], {}
        for r, parent, sig in zip(active, parents, sigs):
            kids, ops = self.children(r, parent, sig)
            n_fresh[r.k] = len(kids)
            if kids:
                jobs.append(Job(r, kids, ops, r.buffer.entry_bound()))
        # the cache pays only for batches large enough (PREFIX_MIN_CHILDREN: measured on CPU)
        use_cache = sum(n_fresh.values()) >= PREFIX_MIN_CHILDREN.get(self.dev.type, 0)
        entries = self.evaluate(jobs, {r.k: p.ids for r, p in zip(active, parents)} if use_cache else None)
        dt = time.time() - t_it  # the iteration's time (the updates below are bookkeeping)
        self.loop_seconds += dt
        self.clock.last_dt = dt
        for r in active:  # shared among the features that ran it
            self.update(r, entries.get(r.k, []), it, n_fresh[r.k], dt / len(active))

    def signals(self, active: list[FeatureRun], parents: list[Entry]):
        """The K parents' gradients and next-token distributions, one forward + backward pass."""
        weights = [r.xe_weight(p) for r, p in zip(active, parents)]
        return batched_parent_signals(
            self.model, self.group, [p.ids for p in parents], [r.k for r in active], weights
        )

    def children(self, r: FeatureRun, parent: Entry, sig) -> tuple[list[torch.Tensor], list[str]]:
        """Feature ``r``'s children of ``parent``: made, re-encoded, and not seen before."""
        kids, ops = make_children(parent.ids, sig, r.cfg, r.gen, self.banned, self.vocab)
        if r.readable_parent and r.cfg.head_trims:  # a readable parent's fragment of a first word goes
            trims = head_trims(parent.ids, r.cfg.min_tokens)
            kids, ops = [*kids, *trims], ops + ["head_trim"] * len(trims)
        return r.fresh(r.canon(kids), ops)

    def update(self, r: FeatureRun, entries: list[Entry], it: int, n_fresh: int, seconds: float) -> None:
        """Merge ``entries`` into ``r``'s buffer, track its best and log the iteration (``seconds``: its
        share of the iteration's time)."""
        r.buffer.merge(entries)
        top = min(entries, key=r.buffer.loss) if entries else None
        readable = r.readable_loss()
        if r.buffer.loss(r.buffer.entries[0]) < r.buffer.loss(r.best):
            r.best, r.since_improved = r.buffer.entries[0], 0
        elif readable < r.readable_best:  # the readable headline improved: that is progress too
            r.since_improved = 0
        else:
            r.since_improved += 1
        r.readable_best = min(r.readable_best, readable)
        r.history.append(
            HistoryRow(
                iter=it,
                operator=top.source if top else None,
                child_activation=top.score if top else None,
                child_xe=top.xe if top else None,
                best_activation=r.best.score,
                best_xe=r.best.xe,
                best_loss=r.buffer.loss(r.best),
                best_feasible=r.buffer.feasible(r.best),
                best_tokens=len(r.best.ids),
                candidates=n_fresh,
                seconds=seconds,
                elapsed=self.clock.elapsed(),
            )
        )

    def patience(self, it: int) -> None:
        """Every active feature whose best has not improved for ``patience`` iterations restarts from its
        next unused starts (keeping its best) while restarts are left, else stops."""
        for r in self.runs:
            if r.active and r.cfg.patience is not None and r.since_improved >= r.cfg.patience:
                self._restart_or_stop(r, it)

    def _restart_or_stop(self, r: FeatureRun, it: int) -> None:
        if r.restarts_left > 0 and r.unused:
            r.restarts_left -= 1
            r.since_improved = 0
            tops = r.buffer.lane_tops()[1:]  # the Pareto slots' and rungs' bests survive a restart
            r.buffer.entries = []
            r.buffer.merge(r.unused[: r.cfg.buffer_size] + [r.best] + tops)
            r.unused = r.unused[r.cfg.buffer_size :]
            log.info("%srestart at iteration %d", f"{r.label}: " if r.label else "", it)
        else:
            r.active, r.stop_reason = False, "patience"

    # ---- evaluation ----
    def evaluate(
        self, jobs: list[Job], parents: dict[int, torch.Tensor] | None = None
    ) -> dict[int, list[Entry]]:
        """All jobs' candidates in one batch -> per feature, the entries that may enter its buffer.

        ``parents``: ``{k: parent ids}`` whose children may use the prefix cache."""
        seqs = [s for job in jobs for s in job.seqs]
        if not seqs:
            return {}
        owner = torch.tensor([job.run.k for job in jobs for _ in job.seqs], device=self.dev)
        bound = torch.tensor(
            [float("nan") if job.bound is None else job.bound for job in jobs for _ in job.seqs],
            dtype=torch.float64,
        )
        ids, mask = pad(seqs, self.pad_id, device=self.dev)
        lengths = mask.sum(1)
        if self.cascade:
            out = cascade(self.scorer, self.full, ids, lengths, owner, bound, parents)
        else:
            o = self.full(ids, lengths, owner, parents)
            out = EvalOutput(o.scores.cpu(), o.xe.cpu(), None, o.valid, o.peak.cpu())
        entries, i = {}, 0
        for job in jobs:
            j = i + len(job.seqs)
            part = EvalOutput(out.scores[i:j], out.xe[i:j], None, out.valid[i:j], out.peak[i:j])
            entries[job.run.k] = self.ingest(job.run, job.seqs, job.sources, part, lengths[i:j])
            i = j
        return entries

    def ingest(self, r: FeatureRun, seqs, sources, out: EvalOutput, lengths: torch.Tensor) -> list[Entry]:
        """Feature ``r``'s share of an evaluated batch -> its entries; counts non-finite and capped scores
        and updates its frontier."""
        scores, xe = out.scores, out.xe
        bad = torch.isnan(scores) | torch.isposinf(scores)
        if r.cfg.needs_xe:
            bad |= torch.isnan(xe)
        r.counters.nonfinite += int(bad.sum())
        r.counters.evaluated += len(seqs)
        # -inf scores (norm guard) and children the cascade cut off (XE +inf) never enter
        finite = torch.isfinite(scores) & ~bad & ~torch.isinf(xe)
        real = torch.arange(out.valid.shape[1], device=out.valid.device)[None] < lengths[:, None]
        r.counters.capped += int((~out.valid & real).sum())
        if r.cfg.needs_xe:
            r.frontier.add(seqs, scores, xe, finite)
        return [
            Entry(s, float(sc), float(x), src, float(pk))
            for s, sc, x, src, pk, ok in zip(
                seqs, scores.tolist(), xe.tolist(), sources, out.peak.tolist(), finite.tolist()
            )
            if ok
        ]

    # ---- the whole run ----
    def run(self, errors: str = "raise", on_interrupt: str = "finish") -> list:
        """Start, iterate until ``iters`` / patience / ``time_budget`` / Ctrl-C, and finish.

        Ctrl-C: ``on_interrupt='finish'`` stops and returns every feature's best so far
        (``interrupted=True``); ``'raise'`` re-raises at once. ``time_budget`` counts from the start pool
        to the verified results; one-time costs (the activation stores, the norm cap, the XE table) come
        before it and are reported in each result's ``setup`` (:mod:`.clock`)."""
        scans = [r.objective for r in self.runs if r.cfg.start in ("dataset", "auto")]
        prepare_stores(self.model, self.tok, [o for o in scans if stats_examples(o) is None], self.clock)
        self.clock.start()
        self.start(errors)
        bar = tqdm(
            total=self.cfg.iters,
            desc="dream" if isinstance(self.group, Single) else f"dream x{len(self.runs)}",
            unit="it",
            disable=not self.cfg.progress,
            dynamic_ncols=True,
        )
        try:
            self._iterate(bar)
        except KeyboardInterrupt:
            if on_interrupt == "raise":
                raise
            self.interrupted = True
            for r in self.runs:
                if r.active:
                    r.stop_reason = "interrupted"
            log.warning("interrupted: returning the best prompt(s) so far")
        finally:
            bar.close()
        return self.finish()

    def _iterate(self, bar) -> None:
        for it in range(self.cfg.iters):
            if not any(r.active for r in self.runs):
                break
            self.step(it)
            bar.update()
            best = [r.best for r in self.runs if r.best is not None]
            if isinstance(self.group, Single) and best:
                bar.set_postfix(act=f"{best[0].score:.2f}", xe=f"{best[0].xe:.2f}")
            else:
                bar.set_postfix(active=sum(r.active for r in self.runs))
            if stop_requested():  # first Ctrl-C under graceful_sigint: stop cleanly after this iteration
                raise KeyboardInterrupt
            n_verify = sum(len(candidates(r)) + len(r.frontier.points) for r in self.runs if r.error is None)
            if self.clock.out_of_time(n_verify):
                for r in self.runs:
                    if r.active:
                        r.active, r.stop_reason = False, "time budget"
                break
            self.patience(it)

    def finish(self) -> list:
        """Verify each feature's best by the reference path and assemble its result: a :class:`DreamResult`
        or a :class:`FeatureError` each. ``wall_time`` is the search's time (start to last iteration; the
        group's time divided among its features when K > 1, whose undivided figures go to
        ``environment.multi``); each verification times itself (``verification.seconds``)."""
        searched = self.clock.elapsed()
        K = len(self.runs)
        multi = None
        if not isinstance(self.group, Single):
            cached = self.scorer.n_cached_tokens + self.full.n_cached_tokens
            multi = MultiRun(K, searched, self.loop_seconds, cached)
        out: list = []
        for r in self.runs:
            if r.error is not None:
                out.append(FeatureError(getattr(r.objective, "latent", None), r.error))
                continue
            interrupted = self.interrupted and r.stop_reason == "interrupted"
            out.append(
                finish_result(
                    self.model,
                    self.tok,
                    r,
                    wall_time=searched / K,
                    interrupted=interrupted,
                    multi=multi,
                    setup=self.clock.setup,
                )
            )
        return out
