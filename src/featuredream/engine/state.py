"""One feature's state in the dreaming loop, and the loop's small typed records: a feature's counters, one
history row per iteration, one evaluation job."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..objectives.dataset import DatasetExamples
from ..objectives.kinds import Objective
from .buffer import Buffer, Entry, Frontier
from .children import Canonicalizer
from .config import DreamConfig
from .fluency import XeLimit, resolve_xe_limit
from .records import HistoryRow


@dataclass
class Counters:
    """A feature's candidate counts: evaluated, non-finite scores, capped positions (norm guard)."""

    evaluated: int = 0
    nonfinite: int = 0
    capped: int = 0


@dataclass
class Job:
    """One feature's candidates for one evaluation."""

    run: FeatureRun
    seqs: list[torch.Tensor]
    sources: list[str]
    """Each candidate's operator (children) or source (starts)."""
    bound: float | None
    """Activation a candidate must exceed to enter the buffer (None: anything may)."""


@dataclass(frozen=True)
class RungSpec:
    """One rung of a fluency ladder: its ceiling as given, resolved for the objective, and its buffer lane."""

    ceiling: float | str | None
    limit: XeLimit | None
    lane: int


@dataclass
class FeatureRun:
    """Feature ``k`` of a group: its objective, config (own seed) and random generator, buffer, seen set,
    frontier, counters, history, unused starts, best entry, patience and restart counters."""

    k: int
    objective: Objective
    cfg: DreamConfig
    gen: torch.Generator
    buffer: Buffer
    canon: Canonicalizer
    label: str | None = None
    seen: set = field(default_factory=set)
    frontier: Frontier = field(default_factory=Frontier)
    counters: Counters = field(default_factory=Counters)
    history: list[HistoryRow] = field(default_factory=list)
    unused: list = field(default_factory=list)
    best: Entry | None = None
    start: str = ""
    since_improved: int = 0
    restarts_left: int = 0
    stop_reason: str = "iterations"
    active: bool = True
    error: str | None = None
    rungs: list[RungSpec] = field(default_factory=list)
    """The fluency ladder's rungs (``cfg.ladder``), each with its own lane in ``buffer``."""
    dataset: DatasetExamples | None = None
    """The objective's top corpus examples and maximum (its SAE's statistics or a corpus scan), when the
    start used them."""
    floor: float | None = None
    """The readable goal's floor as an activation (None: the headline is the most activating prompt)."""
    readable_credit: float = 0.0
    """The readable lane's share of parents, accumulated (a parent from it each time this reaches 1)."""
    readable_turns: int = 0
    readable_parent: bool = False
    """The current parent came from the readable lane."""
    readable_best: float = math.inf
    """The readable lane's best loss so far (inf: nothing reached the floor)."""

    def readable_loss(self) -> float:
        """The readable lane's best loss now (inf: no lane, or nothing in it)."""
        lane = self.buffer.readable_lane
        if lane is None or not self.buffer.entries:
            return math.inf
        return float(self.buffer.lane_losses(self.buffer.entries, lane).min())

    def dataset_maximum(self) -> tuple[float | None, str | None]:
        """The feature's dataset maximum (the ratio's denominator) and its source: the maximum of the examples
        the start used (statistics or corpus scan), else the one its SAE statistics record."""
        if self.dataset is not None and self.dataset.maximum is not None:
            return self.dataset.maximum, self.dataset.source
        known = self.objective.dataset_max() if hasattr(self.objective, "dataset_max") else None
        return known, None if known is None else "SAE statistics"

    def parent(self, it: int) -> Entry:
        """Iteration ``it``'s parent: the buffer's entries in turn, except that once the readable lane holds
        prompts a ``readable_share`` of the iterations take its members in turn."""
        lane = self.buffer.readable_lane
        members = self.buffer.lane_members(lane) if lane is not None else []
        self.readable_parent = False
        if members:
            self.readable_credit += self.cfg.readable_share
            if self.readable_credit >= 1.0:
                self.readable_credit -= 1.0
                self.readable_turns += 1
                self.readable_parent = True
                return members[(self.readable_turns - 1) % len(members)]
        return self.buffer.entries[it % len(self.buffer.entries)]

    def xe_weight(self, parent: Entry) -> float:
        """The XE weight of ``parent``'s gradient loss: the penalty, plus 1 (feasible) or 10 (infeasible)
        under a ceiling, so an infeasible parent is pushed back towards fluency; a readable-lane parent's is
        ``readable_xe_weight`` more."""
        lam = self.cfg.xe_regularization
        if self.buffer.limit is not None:
            lam += 1.0 if self.buffer.feasible(parent) else 10.0
        return lam + (self.cfg.readable_xe_weight if self.readable_parent else 0.0)

    def fresh(self, kids: list[torch.Tensor | None], ops: list[str]) -> tuple[list[torch.Tensor], list[str]]:
        """The canonical children not seen before (and mark them seen), with their operators."""
        out, op_of = [], []
        for kid, op in zip(kids, ops):
            key = tuple(kid.tolist()) if kid is not None else None
            if key is not None and key not in self.seen:
                self.seen.add(key)
                out.append(kid)
                op_of.append(op)
        return out, op_of


def new_run(tokenizer, group, cfg: DreamConfig, k: int, model_table) -> FeatureRun:
    """Feature ``k`` of ``group`` with its own ``cfg`` (seed): its generator and its buffer's lanes (lane 0:
    the run's own ranking; then one per Pareto penalty; then one per ladder rung, the most activating under
    its ceiling). ``model_table()``: the model's XE table, for percentile ceilings without statistics."""
    single = group.singles[k]
    pareto, ladder = list(cfg.pareto or ()), list(cfg.ladder or ())
    limit = resolve_xe_limit(cfg.xe_max, single, cfg.max_tokens, model_table)
    rungs = [
        RungSpec(c, resolve_xe_limit(c, single, cfg.max_tokens, model_table), 1 + len(pareto) + i)
        for i, c in enumerate(ladder)
    ]
    buffer = Buffer(
        [cfg.xe_regularization] + pareto + [0.0] * len(rungs),
        [cfg.buffer_size] + [1] * (len(pareto) + len(rungs)),
        limit,
        [limit] * (1 + len(pareto)) + [r.limit for r in rungs],
    )
    return FeatureRun(
        k,
        single,
        cfg,
        torch.Generator(device="cpu").manual_seed(cfg.seed),
        buffer,
        Canonicalizer(tokenizer, cfg.min_tokens, cfg.max_tokens),
        label=group.label(k),
        restarts_left=cfg.restarts,
        rungs=rungs,
    )
