"""Choosing what a dream reports, on reference values: the readable headline and the K distinct dreams.

At the end of a run every candidate (the buffer: each lane's prompts) has been re-scored from its text by the
reference path. With the readable goal and a floor (:mod:`.readable`), the headline is the most readable
candidate whose re-scored activation reaches the floor; the ``dreams`` are the most readable candidates
above the floor that are pairwise distinct (:func:`~.readable.overlap` at most ``distinct_overlap``), filled
up, when fewer reached the floor, by the most activating distinct candidates under the ceiling (each marked
``above_floor=False``). Without a floor the dreams are the most activating distinct candidates.
"""

from __future__ import annotations

import math

import torch

from ..text.readability import repeats
from .buffer import Entry, rank_loss
from .readable import ReadableRule, distinct_from
from .results import Dream, Prompt


def reference_entries(entries: list[Entry], ref) -> list[Entry]:
    """The candidates with their reference values (activation, XE, peak surprisal) in place of the fast path's."""
    peaks = ref.peak.tolist() if ref.peak is not None else [math.nan] * len(entries)
    return [
        Entry(e.ids, float(s), float(x), e.source, float(p))
        for e, s, x, p in zip(entries, ref.scores.tolist(), ref.xe.tolist(), peaks)
    ]


def readable_order(run, ref_entries: list[Entry]) -> tuple[list[int], torch.Tensor]:
    """Indices of the candidates that reach the floor, most readable first, and every candidate's loss."""
    lane = run.buffer.readable_lane
    if lane is None:
        return [], torch.full((len(ref_entries),), math.inf, dtype=torch.float64)
    rule: ReadableRule = run.buffer.rules[lane]
    losses = rule.losses(ref_entries)
    order = torch.argsort(losses, stable=True).tolist()
    return [i for i in order if math.isfinite(losses[i])], losses


def activating_order(run, ref_entries: list[Entry]) -> list[int]:
    """Indices of the candidates by the run's own ranking (most activating under the ceiling first)."""
    cfg, limit = run.cfg, run.buffer.limit
    scores = torch.tensor([e.score for e in ref_entries])
    xe = torch.tensor([e.xe for e in ref_entries]) if cfg.needs_xe else torch.full_like(scores, math.nan)
    lims = None if limit is None else limit.of([len(e.ids) for e in ref_entries])
    return torch.argsort(rank_loss(scores, xe, cfg.xe_regularization, lims), stable=True).tolist()


def pick_dreams(run, ref_entries: list[Entry]) -> tuple[list[int], list[bool], torch.Tensor]:
    """The ``cfg.dreams`` distinct candidates to report (indices, and whether each reached the floor): the
    most readable above the floor first, then the most activating; and every candidate's readable loss."""
    above, losses = readable_order(run, ref_entries)
    picked: list[int] = []
    flags: list[bool] = []
    for order, flag in ((above, True), (activating_order(run, ref_entries), False)):
        for i in order:
            if len(picked) == run.cfg.dreams:
                break
            ids = ref_entries[i].ids.tolist()
            if i not in picked and distinct_from(
                ids, [ref_entries[j].ids.tolist() for j in picked], run.cfg.distinct_overlap
            ):
                picked.append(i)
                flags.append(flag)
    return picked, flags, losses


def dream_record(prompt: Prompt, entry: Entry, above: bool, rule: ReadableRule | None) -> Dream:
    """One reported dream: its prompt (re-scored), whether it reached the floor, and its readability
    against natural text of its length (None without a readability reference, ``goal='max'``)."""
    reps = repeats(entry.ids.tolist())
    excess, peak_ok, reps_ok = None, None, None
    if rule is not None:
        n = torch.tensor([len(entry.ids)])
        excess = float(rule.readability.excess(torch.tensor([entry.xe]), n))
        bad_peak, bad_reps = rule.readability.broken(torch.tensor([entry.peak]), torch.tensor([reps]), n)
        peak_ok, reps_ok = not bool(bad_peak), not bool(bad_reps)
    return Dream(prompt, above, excess, entry.peak, reps, peak_ok, reps_ok)
