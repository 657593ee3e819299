"""A mixed batch of children of one parent, made by the loop's own operators (for the prefix-cache tests)."""

from __future__ import annotations

import torch

from featuredream.engine.mutations import delete, gcg_swap, sample_insert, sample_swap


def mixed_children(
    parent: torch.Tensor, vocab: int, seed: int = 0, unrelated: bool = True
) -> list[torch.Tensor]:
    """GCG / sampled swaps, inserts and deletes at every kind of position (ragged lengths), then (with
    ``unrelated``) one child sharing nothing or little with the parent, then the parent itself (all but its
    last token from the cache)."""
    g = torch.Generator().manual_seed(seed)
    L = len(parent)
    grad = torch.randn(L, vocab, generator=g)
    logprobs = torch.log_softmax(torch.randn(L, vocab, generator=g), dim=-1)
    banned = torch.tensor([0])
    kids = [
        gcg_swap(parent, grad, 6, 16, g, banned)[0],
        sample_swap(parent, logprobs, 5, 8, g, banned)[0],
        sample_insert(parent, logprobs, 6, 8, g, banned)[0],
        delete(parent, 5, g)[0],
    ]
    out = [k for batch in kids for k in batch.unbind(0)]
    if unrelated:
        out.append(torch.randint(1, vocab, (L - 2,), generator=g))
    return out + [parent.clone()]
