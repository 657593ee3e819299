"""The buffer of prompts, the ranking rule, and the activation-vs-XE Pareto frontier.

Ranking (per penalty lambda): feasible prompts (XE <= ``xe_max``) by ``-activation + lambda * XE``;
infeasible prompts after all feasible ones, by how far their XE exceeds ``xe_max`` (seed bug 9); non-finite
scores never ranked in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .fluency import XeLimit

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

    def key(self) -> tuple[int, ...]:
        return tuple(self.ids.tolist())


class Buffer:
    """The union over penalties of the best ``per_penalty`` distinct prompts under each penalty."""

    def __init__(self, penalties: list[float], per_penalty: list[int], xe_max: XeLimit | None):
        self.penalties, self.per, self.limit = penalties, per_penalty, xe_max
        self.entries: list[Entry] = []

    def limits(self, entries: list[Entry]) -> torch.Tensor | None:
        """Each entry's XE ceiling at its own length ``[n]`` (None: no ceiling)."""
        return None if self.limit is None else self.limit.of([len(e.ids) for e in entries])

    def feasible(self, e: Entry) -> bool:
        return self.limit is None or e.xe <= self.limit.at(len(e.ids))

    def merge(self, cands: list[Entry]) -> None:
        pool = {e.key(): e for e in self.entries + cands}
        pool_l = list(pool.values())
        scores = torch.tensor([e.score for e in pool_l])
        xe = torch.tensor([e.xe for e in pool_l])
        keep: dict[tuple, Entry] = {}
        for lam, per in zip(self.penalties, self.per):
            order = torch.argsort(rank_loss(scores, xe, lam, self.limits(pool_l)), stable=True)
            for i in order[:per].tolist():
                if math.isfinite(pool_l[i].score):
                    keep.setdefault(pool_l[i].key(), pool_l[i])
        primary = rank_loss(
            torch.tensor([e.score for e in keep.values()]),
            torch.tensor([e.xe for e in keep.values()]),
            self.penalties[0],
            self.limits(list(keep.values())),
        )
        vals = list(keep.values())
        self.entries = [vals[i] for i in torch.argsort(primary, stable=True).tolist()]

    def entry_bound(self) -> float | None:
        """Activation a new prompt must exceed to enter under some penalty (None: anything may enter).

        Since XE >= 0, ``-act + lam * xe < worst_loss`` implies ``act > -worst_loss``.
        """
        bounds = []
        for lam, per in zip(self.penalties, self.per):
            losses = rank_loss(
                torch.tensor([e.score for e in self.entries]),
                torch.tensor([e.xe for e in self.entries]),
                lam,
                self.limits(self.entries),
            )
            if len(losses) < per:
                return None
            worst = float(torch.sort(losses).values[per - 1])
            if worst >= _INFEASIBLE / 2 or not math.isfinite(worst):
                return None
            bounds.append(-worst)
        return min(bounds)

    def loss(self, e: Entry) -> float:
        return float(
            rank_loss(torch.tensor([e.score]), torch.tensor([e.xe]), self.penalties[0], self.limits([e]))
        )


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
