"""Seeded tiny corpora of fixture words."""

from __future__ import annotations

import torch

WORDS = (
    "The quick brown fox jumps over the lazy dog. To be, or not to be, that is the question. Whether 'tis "
    "nobler in the mind to suffer the slings and arrows of outrageous fortune. def parse(text): return "
    "json.loads(text) if text else None. The capital of France is Paris. Once upon a time there was a little "
    "girl who lived in a village near the forest."
).split()


def tiny_corpus(n_docs: int = 20, n_words: int = 60) -> list[str]:
    """Seeded documents of random words from a few sentences (~170 tokens each: 10 windows of 16)."""
    g = torch.Generator().manual_seed(0)
    return [
        " ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (n_words,), generator=g).tolist())
        for _ in range(n_docs)
    ]
