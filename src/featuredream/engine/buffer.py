"""The buffer of prompts, the ranking rule, and the activation-vs-XE Pareto frontier.

Ranking (per penalty lambda): feasible prompts (XE <= ``xe_max``) by ``-activation + lambda * XE``;
infeasible prompts after all feasible ones, by how far their XE exceeds ``xe_max`` (so the search descends into the feasible region); non-finite
scores never ranked in.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from ..text.readability import repeats
from .fluency import XeLimit
from .readable import ReadableRule, distinct_from

_INFEASIBLE = 1e6


def rank_loss(
    scores: torch.Tensor, xe: torch.Tensor, lam: float, xe_max: float | torch.Tensor | None
) -> torch.Tensor:
    """Loss to minimize ``[n]`` (float64): see module doc. ``xe`` may be NaN when not computed;
    ``xe_max`` is one ceiling or one per row ``[n]`` (a length-dependent :class:`~.fluency.XeLimit`)."""
    s, x = scores.double(), torch.nan_to_num(xe.double(), nan=0.0)
    loss = -s + lam * x
    if xe_max is not None:
        loss = torch.where(x > xe_max, _INFEASIBLE + 1e3 * (x - xe_max) - 1e-6 * s, loss)
    return torch.where(torch.isfinite(s), loss, torch.inf)


@dataclass
class Entry:
    ids: torch.Tensor  # [L] on the model's device
    score: float
    xe: float
    source: str
    peak: float = math.nan
    """The largest token surprisal (NaN: not computed)."""

    def key(self) -> tuple[int, ...]:
        return tuple(self.ids.tolist())

    @functools.cached_property
    def repeats(self) -> int:
        """Repeated bigrams and immediate token repeats (:func:`featuredream.text.readability.repeats`)."""
        return repeats(self.ids.tolist())


class Buffer:
    """The union over lanes of the best ``per_penalty`` distinct prompts of each lane. Lane ``j`` ranks by
    penalty ``penalties[j]`` under ceiling ``lane_limits[j]`` (default: ``xe_max`` for every lane); lane 0
    is the run's own ranking (``entries`` are in its order; :meth:`feasible` and :meth:`loss` are its). A
    readable lane (:meth:`add_readable_lane`) ranks by a :class:`~.readable.ReadableRule` instead, keeps
    only prompts in it (finite loss) and only prompts distinct from those it already keeps."""

    def __init__(
        self,
        penalties: list[float],
        per_penalty: list[int],
        xe_max: XeLimit | None,
        lane_limits: list[XeLimit | None] | None = None,
    ):
        self.penalties, self.per, self.limit = penalties, per_penalty, xe_max
        self.lane_limits = [xe_max] * len(penalties) if lane_limits is None else list(lane_limits)
        if len(self.lane_limits) != len(penalties):
            raise ValueError(f"{len(self.lane_limits)} lane ceilings for {len(penalties)} lanes")
        self.entries: list[Entry] = []
        self.rules: dict[int, ReadableRule] = {}
        self.distinct: dict[int, float] = {}

    def add_readable_lane(self, rule: ReadableRule, size: int, distinct: float) -> int:
        """Append a readable lane of ``size`` prompts, pairwise at most ``distinct`` overlapping; its index."""
        lane = len(self.per)
        self.penalties.append(0.0)
        self.per.append(size)
        self.lane_limits.append(rule.limit)
        self.rules[lane], self.distinct[lane] = rule, distinct
        self.merge([])
        return lane

    @property
    def readable_lane(self) -> int | None:
        """The readable lane's index (None: there is none)."""
        return next(iter(self.rules), None)

    def lane_members(self, lane: int) -> list[Entry]:
        """The entries ``lane`` keeps, best first (a readable lane: those in it, distinct)."""
        if not self.entries:
            return []
        losses = self.lane_losses(self.entries, lane)
        order = torch.argsort(losses, stable=True).tolist()
        return self._pick(
            lane, [self.entries[i] for i in order if math.isfinite(losses[i]) or lane not in self.rules]
        )

    def limits(self, entries: list[Entry], lane: int = 0) -> torch.Tensor | None:
        """Each entry's XE ceiling at its own length in ``lane`` ``[n]`` (None: no ceiling)."""
        limit = self.lane_limits[lane]
        return None if limit is None else limit.of([len(e.ids) for e in entries])

    def feasible(self, e: Entry) -> bool:
        return self.limit is None or e.xe <= self.limit.at(len(e.ids))

    def lane_losses(self, entries: list[Entry], lane: int) -> torch.Tensor:
        """``[n]`` the entries' losses in ``lane``."""
        if lane in self.rules:
            return self.rules[lane].losses(entries)
        scores = torch.tensor([e.score for e in entries])
        xe = torch.tensor([e.xe for e in entries])
        return rank_loss(scores, xe, self.penalties[lane], self.limits(entries, lane))

    def _pick(self, lane: int, ordered: list[Entry]) -> list[Entry]:
        """The first ``per[lane]`` of ``ordered`` that the lane keeps (distinct ones for a readable lane)."""
        if lane not in self.distinct:
            return ordered[: self.per[lane]]
        kept: list[Entry] = []
        for e in ordered:
            if len(kept) == self.per[lane]:
                break
            if distinct_from(e.ids.tolist(), [k.ids.tolist() for k in kept], self.distinct[lane]):
                kept.append(e)
        return kept

    def merge(self, cands: list[Entry]) -> None:
        pool_l = list({e.key(): e for e in self.entries + cands}.values())
        keep: dict[tuple, Entry] = {}
        for lane in range(len(self.per)):
            losses = self.lane_losses(pool_l, lane)
            order = torch.argsort(losses, stable=True).tolist()
            if lane in self.rules:  # only prompts in the lane
                order = [i for i in order if math.isfinite(losses[i])]
            for e in self._pick(lane, [pool_l[i] for i in order]):
                if math.isfinite(e.score):
                    keep.setdefault(e.key(), e)
        vals = list(keep.values())
        primary = self.lane_losses(vals, 0) if vals else torch.empty(0)
        self.entries = [vals[i] for i in torch.argsort(primary, stable=True).tolist()]

    def lane_tops(self) -> list[Entry]:
        """Each lane's best entry (lanes in order; the same entry may head several)."""
        if not self.entries:
            return []
        return [
            self.entries[int(torch.argmin(self.lane_losses(self.entries, j)))] for j in range(len(self.per))
        ]

    def entry_bound(self) -> float | None:
        """Activation a new prompt must exceed to enter some lane (None: anything may enter).

        Since XE >= 0, ``-act + lam * xe < worst_loss`` implies ``act > -worst_loss``.
        """
        bounds = []
        for lane, per in enumerate(self.per):
            if lane in self.rules:  # any prompt reaching the floor may be the most readable one
                bounds.append(self.rules[lane].entry_bound())
                continue
            losses = self.lane_losses(self.entries, lane)
            if len(losses) < per:
                return None
            worst = float(torch.sort(losses).values[per - 1])
            if worst >= _INFEASIBLE / 2 or not math.isfinite(worst):
                return None
            bounds.append(-worst)
        return min(bounds)

    def loss(self, e: Entry) -> float:
        return float(self.lane_losses([e], 0))


def frontier_update(front: torch.Tensor, scores: torch.Tensor, xe: torch.Tensor) -> torch.Tensor:
    """Non-dominated (max score, min XE) rows of ``[n, 2]`` (score, xe) points, sorted by XE."""
    pts = torch.cat([front, torch.stack([scores.float().cpu(), xe.float().cpu()], dim=1)])
    pts = pts[torch.isfinite(pts).all(dim=1)]
    if len(pts) == 0:
        return pts
    pts = pts[torch.argsort(pts[:, 0], descending=True, stable=True)]
    pts = pts[torch.argsort(pts[:, 1], stable=True)]
    best = torch.cummax(pts[:, 0], dim=0).values
    keep = torch.ones(len(pts), dtype=torch.bool)
    keep[1:] = pts[1:, 0] > best[:-1]
    return pts[keep]


class Frontier:
    """The activation-vs-XE Pareto frontier of everything evaluated: ``points [n, 2]`` (score, xe) and the
    ids of each point (``ids[(score, xe)]``), kept as new candidates arrive."""

    def __init__(self) -> None:
        self.points = torch.empty(0, 2)
        self.ids: dict[tuple[float, float], list[int]] = {}

    def add(
        self, seqs: list[torch.Tensor], scores: torch.Tensor, xe: torch.Tensor, keep: torch.Tensor
    ) -> None:
        """Candidates ``seqs`` with ``scores [n]``, ``xe [n]``; only rows where ``keep [n]`` are points."""
        old = {tuple(p) for p in self.points.tolist()}
        self.points = frontier_update(self.points, scores[keep], xe[keep])
        new = {tuple(p) for p in self.points.tolist()} - old
        for i in torch.nonzero(keep).squeeze(1).tolist():
            key = (float(scores[i]), float(xe[i]))
            if key in new:
                self.ids[key] = seqs[i].tolist()

    def members(self) -> list[list[int]]:
        """The ids of every point still on the frontier, in order of XE."""
        return [self.ids[k] for k in map(tuple, self.points.tolist()) if k in self.ids]
