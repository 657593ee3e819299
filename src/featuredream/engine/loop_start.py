"""The start phase of :class:`~.loop.DreamLoop`: every feature's start pool scored in one batch, the buffers
filled, the readable goal's floor and lane set up (:mod:`.readable`), and the cost of one reference re-score
measured for the time budget (:mod:`.clock`)."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import torch

from ..objectives.dataset import dataset_examples
from .buffer import Entry
from .config import floor_value
from .readable import ReadableRule, example_reference, readable_lane_size
from .starts import sample_starts, start_pool
from .state import FeatureRun, Job

log = logging.getLogger(__name__)


class StartPhase:
    """:meth:`start` and its helpers, mixed into :class:`~.loop.DreamLoop` (which owns the state they use:
    ``model``, ``tok``, ``dev``, ``runs``, ``clock``, ``readability``, ``evaluate``, ``_samples``)."""

    def start(self, errors: str = "raise") -> None:
        """Score every feature's start pool in one batch and fill the buffers. A feature that cannot start
        raises ``ValueError`` (``errors='raise'``) or is recorded and skipped (``'record'``)."""
        jobs = [job for r in self.runs if (job := self._start_job(r)) is not None]
        entries = self.evaluate(jobs)
        for r in self.runs:
            if r.error is None and not entries.get(r.k):
                r.error = "every start prompt scored non-finite (norm cap on every position?)"
            if r.error is not None:
                r.active = False
                if errors == "raise":
                    raise ValueError(f"{r.label}: {r.error}" if r.label else r.error)
                continue
            r.unused = sorted(entries[r.k], key=r.buffer.loss)
            self._readable_lane(r)
            r.buffer.merge(
                r.unused[: r.cfg.buffer_size] + self._readable_starts(r, r.unused[r.cfg.buffer_size :])
            )
            r.unused = r.unused[r.cfg.buffer_size :]
            r.best = r.buffer.entries[0]
            r.start = r.best.source
            if not self.clock.t_ref:
                self.clock.t_ref = self._reference_cost(r)
            log.info(
                "dreaming %s: %d start prompts, best from %s", r.objective.name, len(entries[r.k]), r.start
            )

    def _readable_lane(self, r: FeatureRun) -> None:
        """The readable goal: the floor as an activation and the readable lane (:mod:`.readable`); without a
        dataset maximum for a ratio floor, say so and keep the most activating prompt as the headline."""
        if not r.cfg.readable:
            return
        dmax, _ = r.dataset_maximum()
        r.floor = floor_value(r.cfg.floor, dmax)
        if r.floor is None:
            log.warning(
                "%s: no dataset maximum to set the floor %s against: the headline is the most activating "
                "prompt (give --floor as an activation)",
                r.objective.name,
                r.cfg.floor,
            )
            return
        guards = (r.cfg.surprisal_guard, r.cfg.repetition_guard)
        yardstick = self.readability
        best = r.dataset.maximum_context if r.dataset is not None else None
        if r.cfg.readable_reference == "example" and best:
            yardstick = example_reference(self.model, yardstick, best, r.cfg.max_tokens)
        rule = ReadableRule(r.floor, yardstick, r.buffer.limit, guards)
        r.buffer.add_readable_lane(rule, readable_lane_size(r.cfg), r.cfg.distinct_overlap)

    def _readable_starts(self, r: FeatureRun, rest: list[Entry]) -> list[Entry]:
        """The start prompts beyond the buffer's size that the readable lane would take (they reach the floor)."""
        lane = r.buffer.readable_lane
        if lane is None or not rest:
            return []
        losses = r.buffer.lane_losses(rest, lane)
        return [e for e, x in zip(rest, losses.tolist()) if x < float("inf")]

    def _reference_cost(self, r: FeatureRun) -> float:
        """Seconds to re-score one prompt (the best start) by the reference path, as the verification will."""
        from ..evaluation.evaluate import reference_evaluate

        t = time.time()
        reference_evaluate(self.model, self.tok, r.objective, [self.tok.decode(r.best.ids.tolist())])
        return time.time() - t

    def _start_job(self, r: FeatureRun) -> Job | None:
        """Feature ``r``'s start pool, canonical; model samples are made once per seed for all features."""
        if r.cfg.start in ("dataset", "auto"):
            r.dataset = dataset_examples(self.model, self.tok, r.objective, r.cfg.min_tokens)
        pool = start_pool(
            self.model, self.tok, r.objective, replace(r.cfg, n_start_samples=0), r.gen, r.dataset
        )
        if r.cfg.start in ("samples", "auto"):
            pool += self._sample_starts(r)
        canon = r.canon([torch.tensor(ids, device=self.dev) for ids, _ in pool])
        seqs = [c for c in canon if c is not None]
        sources = [src for c, (_, src) in zip(canon, pool) if c is not None]
        if not seqs:
            r.error = (
                f"no start prompt has {r.cfg.min_tokens}..{r.cfg.max_tokens} tokens: give an init_prompt "
                "within the bounds"
            )
            return None
        r.seen.update(tuple(s.tolist()) for s in seqs)
        return Job(r, seqs, sources, None)

    def _sample_starts(self, r: FeatureRun) -> list[tuple[list[int], str]]:
        """Model samples for the start pool, made once per seed (and size) for all features."""
        return sample_starts(self.model, self.tok, r.objective, r.cfg, r.dataset, self._samples)
