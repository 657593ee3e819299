"""One feature's state in the dreaming loop: what a single dream used to keep in closure locals."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .buffer import Buffer, Entry, Frontier
from .children import Canonicalizer
from .config import DreamConfig
from .corpus_scan import DatasetExamples
from .fluency import XeLimit


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
    objective: object
    cfg: DreamConfig
    gen: torch.Generator
    buffer: Buffer
    canon: Canonicalizer
    label: str | None = None
    seen: set = field(default_factory=set)
    frontier: Frontier = field(default_factory=Frontier)
    stats: dict = field(default_factory=lambda: {"nonfinite": 0, "capped": 0, "evaluated": 0})
    history: list = field(default_factory=list)
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

    def counts(self) -> dict[str, int]:
        """The result's counters: candidates evaluated, non-finite, dropped by retokenization, capped."""
        return {
            "evaluated": self.stats["evaluated"],
            "nonfinite": self.stats["nonfinite"],
            "dropped": self.canon.dropped,
            "capped": self.stats["capped"],
        }

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
