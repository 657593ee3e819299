"""The readable goal: a buffer lane of prompts above a floor, ranked by readability, and distinct dreams.

Once a prompt's activation reaches the floor (default: the feature's dataset maximum), making it readable is
worth more than making it stronger. The readable lane of a run's :class:`~.buffer.Buffer` keeps the prompts
that reach the floor under the run's ceiling, ranked by :meth:`featuredream.text.readability.Readability.loss`
(XE above natural text of the same length; a token far more surprising than natural text, or degenerate
repetition, ranks after every prompt without), no two sharing more than ``distinct_overlap`` of their
tokens (:func:`overlap`). It is fed by the same children as every lane; a share of the iterations takes its
parent from it (``readable_share``), with a heavier XE weight in the gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from ..text.readability import Readability
from .fluency import XeLimit


def overlap(a: list[int] | tuple[int, ...], b: list[int] | tuple[int, ...]) -> float:
    """The share of the shorter prompt's distinct tokens that also occur in the other (0: disjoint, 1: one's
    tokens all in the other)."""
    sa, sb = set(a), set(b)
    if not sa or not sb:
        return 0.0
    return len(sa & sb) / min(len(sa), len(sb))


def distinct_from(ids, kept: list, threshold: float) -> bool:
    """``ids`` shares at most ``threshold`` of its tokens with every prompt in ``kept`` (ids sequences)."""
    return all(overlap(ids, k) <= threshold for k in kept)


@dataclass
class ReadableRule:
    """How the readable lane ranks: prompts with activation >= ``floor`` and XE within ``limit`` (the run's
    ceiling, None: none) by ``readability.loss``; every other prompt is not in the lane (``inf``)."""

    floor: float
    readability: Readability
    limit: XeLimit | None
    guards: tuple[bool, bool] = (True, True)
    """(surprisal guard, repetition guard)."""

    def losses(self, entries: list) -> torch.Tensor:
        """``[n]`` float64 readability losses of :class:`~.buffer.Entry` items (``inf``: not in the lane)."""
        if not entries:
            return torch.empty(0, dtype=torch.float64)
        scores = torch.tensor([e.score for e in entries], dtype=torch.float64)
        xe = torch.tensor([e.xe for e in entries], dtype=torch.float64)
        peak = torch.tensor([e.peak for e in entries], dtype=torch.float64)
        reps = torch.tensor([e.repeats for e in entries], dtype=torch.float64)
        lengths = torch.tensor([len(e.ids) for e in entries])
        ok = (scores >= self.floor) & torch.isfinite(xe) & torch.isfinite(scores)
        if self.limit is not None:
            ok &= xe <= self.limit.of(lengths.tolist())
        loss = self.readability.loss(xe, peak, reps, lengths, guards=self.guards)
        return torch.where(ok, loss, torch.full_like(loss, math.inf))

    def entry_bound(self) -> float:
        """A candidate must score above this to enter the lane (the floor, inclusive)."""
        return math.nextafter(self.floor, -math.inf)


def readable_lane_size(cfg) -> int:
    """Prompts the readable lane keeps: the dreams asked for, at least two (two distinct lineages to improve)."""
    return max(cfg.dreams, 2)


@torch.no_grad()
def example_reference(model, readability: Readability, context: list[int], max_tokens: int) -> Readability:
    """``readability`` with its reference XE by length replaced by the dreaming model's XE of ``context`` (the
    feature's best dataset example, ending at its activating token) cut to each length ``2..max_tokens``
    (its last ``L`` tokens, scored alone): a prompt's loss is then how much less readable it is than the best
    example at its own length. Lengths past the context keep the whole context's XE."""
    from ..models.padding import pad
    from ..models.xe import sequence_xe

    dev = next(model.parameters()).device
    cuts = [context[-n:] for n in range(2, min(max_tokens, len(context)) + 1)]
    if not cuts:
        return readability
    ids, mask = pad(cuts, 0, device=dev)
    xe = sequence_xe(model(input_ids=ids).logits, ids, mask).double().cpu()  # right padding: never read
    ref = readability.xe_median.clone()
    n = len(ref)
    for i, v in enumerate(xe.tolist()):
        if i + 2 < n:
            ref[i + 2] = v
    ref[:2] = ref[2]
    if len(cuts) + 2 < n:
        ref[len(cuts) + 2 :] = ref[len(cuts) + 1]
    return replace(readability, xe_median=ref)
