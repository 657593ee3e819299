"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import torch

from featuredream.corpus import default_corpus
from featuredream.fluency import sequence_xe
from featuredream.train_sae import make_windows


@torch.no_grad()
def corpus_xe_quantile(model, tok, length: int = 16, n: int = 256, q: float = 0.9, seed: int = 0) -> float:
    """The ``q`` quantile of XE over ``n`` random ``length``-token windows of the held-out corpus documents."""
    windows, doc_idx = make_windows(tok, default_corpus(), length)
    held = windows[doc_idx % 10 == 3]
    g = torch.Generator().manual_seed(seed)
    sample = held[torch.randperm(len(held), generator=g)[:n]]
    xes = []
    for i in range(0, len(sample), 64):
        ids = sample[i : i + 64]
        logits = model(ids).logits
        xes.append(sequence_xe(logits, ids, torch.ones_like(ids, dtype=torch.bool)))
    return float(torch.quantile(torch.cat(xes), q))


def live_sample(sae, n: int, seed: int = 0) -> list[int]:
    """A fixed-seed sample of ``n`` live latents (fired on the corpus) of a shipped SAE."""
    live = sae.stats.live_latents()
    g = torch.Generator().manual_seed(seed)
    return sorted(live[torch.randperm(len(live), generator=g)[:n]].tolist())
