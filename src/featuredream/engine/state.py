"""One feature's state in the dreaming loop, and the loop's small typed records: a feature's counters, one
history row per iteration, one evaluation job."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .buffer import Buffer, Entry, Frontier
from .children import Canonicalizer
from .config import DreamConfig
from .corpus_scan import DatasetExamples
from .fluency import XeLimit
from .objectives import Objective


@dataclass
class Counters:
    """A feature's candidate counts: evaluated, non-finite scores, capped positions (norm guard)."""

    evaluated: int = 0
    nonfinite: int = 0
    capped: int = 0


@dataclass(frozen=True)
class HistoryRow:
    """One iteration of one feature (``DreamResult.history`` holds these as dicts)."""

    iter: int
    operator: str | None
    """The operator of the iteration's best child (None: no child was kept)."""
    child_activation: float | None
    child_xe: float | None
    best_activation: float
    best_xe: float
    best_loss: float
    best_feasible: bool
    best_tokens: int
    candidates: int
    """Fresh children evaluated."""
    seconds: float
    """This iteration's time, shared among the features that ran it."""
    elapsed: float
    """Seconds since the loop began, at the end of this iteration."""


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

    def xe_weight(self, parent: Entry) -> float:
        """The XE weight of ``parent``'s gradient loss: the penalty, plus 1 (feasible) or 10 (infeasible)
        under a ceiling, so an infeasible parent is pushed back towards fluency."""
        lam = self.cfg.xe_regularization
        if self.buffer.limit is not None:
            lam += 1.0 if self.buffer.feasible(parent) else 10.0
        return lam

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
