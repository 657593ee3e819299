"""Cross-entropy of a padded batch over real tokens only (averaging over padding would favour short prompts in a padded batch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_xe(
    logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token next-token cross-entropy.

    Args:
        logits: ``[b, s, vocab]``; ids, mask: ``[b, s]`` (any padding side).
    Returns:
        ``xe [b, s-1]`` (loss of predicting token t+1 from prefix up to t; 0 where not counted) and
        ``counted [b, s-1]`` (both tokens real).
    """
    counted = mask[:, 1:].bool() & mask[:, :-1].bool()
    xe = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="none")
    xe = xe.view(ids.shape[0], -1).masked_fill(~counted, 0.0)
    return xe, counted


def sequence_xe(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy per sequence ``[b]`` over its real predicted tokens (0 for a 1-token sequence)."""
    xe, counted = token_xe(logits, ids, mask)
    return xe.sum(dim=1) / counted.sum(dim=1).clamp_min(1)


def xe_and_peak(
    logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sequence_xe` and each sequence's largest token surprisal ``peak [b]`` (its most surprising
    predicted token's XE; 0 for a 1-token sequence)."""
    xe, counted = token_xe(logits, ids, mask)
    peak = xe.masked_fill(~counted, 0.0).amax(dim=1) if xe.shape[1] else xe.new_zeros(len(ids))
    return xe.sum(dim=1) / counted.sum(dim=1).clamp_min(1), peak
