"""Right-padded batches of token ids: padding and the mask of real tokens."""

from __future__ import annotations

import torch


def length_mask(lengths: torch.Tensor, seq: int) -> torch.Tensor:
    """``[b] -> [b, seq]`` bool mask of real (left-aligned) tokens."""
    return torch.arange(seq, device=lengths.device)[None, :] < lengths[:, None]


def pad_right(seqs: list[torch.Tensor], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """List of 1-D id tensors -> ``ids [b, max_len]`` right-padded with ``pad_id`` and ``lengths [b]``."""
    lengths = torch.tensor([len(s) for s in seqs], device=device)
    ids = torch.full((len(seqs), int(lengths.max())), pad_id, dtype=torch.long, device=device)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
    return ids, lengths
