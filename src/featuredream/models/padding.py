"""Padding, in one place: sequences of token ids of different lengths -> one batch and its mask.

Every batch in featuredream is made by :func:`pad`: the evaluator's right-padded children, the observation
tools' left- or right-padded prompts, the statistics' windows. :func:`length_mask` is the inverse view: the
mask of right-padded rows from their lengths.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..checks import check_choice


def pad(
    seqs: Sequence[Sequence[int] | torch.Tensor], pad_id: int = 0, side: str = "right", device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lists (or 1-D tensors) of ids -> ``ids [b, s]`` padded on ``side`` with ``pad_id`` (a value no
    computation reads) and ``mask [b, s]`` (bool, True at real tokens); ``s`` is the longest sequence."""
    check_choice(side, ("right", "left"), "padding side")
    if not seqs:
        raise ValueError("nothing to pad: valid is at least one sequence")
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(seqs), n), dtype=torch.bool, device=device)
    for i, s in enumerate(seqs):
        cols = slice(0, len(s)) if side == "right" else slice(n - len(s), n)
        ids[i, cols] = torch.as_tensor(s, dtype=torch.long, device=device)
        mask[i, cols] = True
    return ids, mask


def length_mask(lengths: torch.Tensor, seq: int) -> torch.Tensor:
    """``[b] -> [b, seq]`` bool mask of real (left-aligned) tokens."""
    return torch.arange(seq, device=lengths.device)[None, :] < lengths[:, None]
