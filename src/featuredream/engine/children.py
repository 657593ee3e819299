"""One parent's children: the four operators mixed by configuration, then re-encoded so that every
candidate's ids equal the tokenization of its text (every score is reproducible from the string)."""

from __future__ import annotations

import torch

from ..evaluation.parent_grads import ParentSignals
from .config import DreamConfig
from .mutations import OPERATORS, delete, gcg_swap, sample_insert, sample_swap


class Canonicalizer:
    """Re-encode decoded children so that every candidate's ids equal the tokenization of its text.

    ``dropped`` counts the children rejected: outside ``min_tokens..max_tokens`` once re-encoded, or not
    a fixed point of a second decode/encode round trip (clean-up of spaces can change a text twice).
    """

    def __init__(self, tokenizer, min_tokens: int, max_tokens: int):
        self.tok, self.lo, self.hi = tokenizer, min_tokens, max_tokens
        self.dropped = 0

    def __call__(self, children: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """Each child's canonical ids (its re-encoded text), or None when it is rejected."""
        texts = self.tok.batch_decode([c.tolist() for c in children], skip_special_tokens=False)
        enc = self.tok(texts, add_special_tokens=False)["input_ids"]
        again = self.tok(self.tok.batch_decode(enc, skip_special_tokens=False), add_special_tokens=False)[
            "input_ids"
        ]
        out: list[torch.Tensor | None] = []
        for c, ids, ids2 in zip(children, enc, again):
            if not self.lo <= len(ids) <= self.hi or ids != ids2:
                self.dropped += 1
                out.append(None)
            else:
                out.append(torch.tensor(ids, device=c.device) if ids != c.tolist() else c)
        return out


def banned_ids(tokenizer, vocab: int) -> torch.Tensor:
    """Ids no operator may propose ``[n]``: special tokens and the embedding matrix's padding rows."""
    ids = set(tokenizer.all_special_ids)
    ids |= set(range(len(tokenizer), vocab))
    return torch.tensor(sorted(i for i in ids if i < vocab), dtype=torch.long)


def operator_counts(length: int, cfg: DreamConfig, gen: torch.Generator) -> list[int]:
    """How many of the ``n_children`` each operator makes for a parent of ``length`` tokens (insert only
    below ``max_tokens``, delete only above ``min_tokens``)."""
    p = torch.tensor(
        [cfg.p_gcg_swap, cfg.p_sample_swap, cfg.p_sample_insert, cfg.p_delete], dtype=torch.float
    )
    if length >= cfg.max_tokens:
        p[2] = 0
    if length <= cfg.min_tokens:
        p[3] = 0
    if p.sum() == 0:  # e.g. only deletes allowed but the parent is at min length
        p[1] = 1.0
    draws = torch.multinomial(p, cfg.n_children, replacement=True, generator=gen)
    return torch.bincount(draws, minlength=4).tolist()


def make_children(
    parent: torch.Tensor,
    sig: ParentSignals,
    cfg: DreamConfig,
    gen: torch.Generator,
    banned: torch.Tensor,
    vocab: int,
) -> tuple[list[torch.Tensor], list[str]]:
    """``parent [L]`` -> up to ``n_children`` children (1-D id tensors) and the operator of each."""
    k2 = min(cfg.sample_k2, vocab - len(banned))
    kids, ops = [], []
    for op, n in zip(OPERATORS, operator_counts(len(parent), cfg, gen)):
        if n == 0:
            continue
        if op == "gcg_swap":
            c, _ = gcg_swap(parent, sig.grad, n, cfg.gcg_topk, gen, banned, sig.logprobs, cfg.gcg_fluency)
        elif op == "sample_swap":
            c, _ = sample_swap(parent, sig.logprobs, n, k2, gen, banned, cfg.top_p)
        elif op == "sample_insert":
            c, _ = sample_insert(parent, sig.logprobs, n, k2, gen, banned, cfg.top_p)
        else:
            c, _ = delete(parent, n, gen)
        kids.extend(c.unbind(0))
        ops.extend([op] * len(c))
    return kids, ops
