"""Mutation operators: one parent -> ``n`` children, vectorized over children (no per-child loops).

Each operator takes the parent ``ids [L]`` and returns ``children [n, L']`` (``L' = L`` for swaps,
``L + 1`` for insert, ``L - 1`` for delete) and the edited position of each child ``[n]``. Randomness comes
only from the ``torch.Generator`` passed in. Token proposals never include ``banned`` ids (special tokens).

:mod:`.signals` computes what the operators need (the gradient for GCG, the next-token log-probabilities
for sampled swap / insert); :mod:`.children` mixes the operators into one parent's children.
"""

from __future__ import annotations

import torch

OPERATORS = ("gcg_swap", "sample_swap", "sample_insert", "delete")


def _banned_mask(vocab: int, banned: torch.Tensor | None, device) -> torch.Tensor:
    mask = torch.zeros(vocab, dtype=torch.bool, device=device)
    if banned is not None and len(banned):
        mask[banned.to(device)] = True
    return mask


def gcg_swap(
    ids: torch.Tensor,
    grad: torch.Tensor,
    n: int,
    topk: int,
    gen: torch.Generator,
    banned: torch.Tensor | None = None,
    logprobs: torch.Tensor | None = None,
    fluency: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace one random position by one of the ``topk`` best tokens by gradient.

    Plain GCG ranks tokens by the most negative loss gradient. With ``fluency > 0`` and the parent's
    ``logprobs [L, V]``, position p ranks by ``-grad / std(grad at p) + fluency * log p(token | prefix up to
    p-1)``: candidates the gradient likes *and* the model finds plausible in place (position 0 by gradient).
    ``ids [L]``, ``grad [L, V]`` -> ``children [n, L]``, ``positions [n]``.
    """
    L, V = grad.shape
    mask = _banned_mask(V, banned, grad.device)
    g = grad.float()
    if fluency > 0 and logprobs is not None:
        g = g / g.std(dim=1, keepdim=True).clamp_min(1e-12)
        g[1:] = g[1:] - fluency * logprobs[: L - 1].float().clamp_min(-50.0)
    g = g.masked_fill(mask, torch.inf)
    top = (-g).topk(min(topk, V - int(mask.sum())), dim=1).indices  # [L, topk], never a banned token
    pos = torch.randint(0, L, (n,), generator=gen, device=gen.device).to(ids.device)
    pick = torch.randint(0, top.shape[1], (n,), generator=gen, device=gen.device).to(ids.device)
    children = ids.repeat(n, 1)
    children[torch.arange(n, device=ids.device), pos] = top[pos, pick]
    return children, pos


def nucleus(logprobs: torch.Tensor, top_p: float) -> torch.Tensor:
    """``logprobs [rows, V]`` with every token outside each row's nucleus set to -inf: the smallest set of
    most probable tokens whose probability reaches ``top_p`` (the most probable token always stays)."""
    if top_p >= 1.0:
        return logprobs
    sorted_lp, order = logprobs.sort(dim=-1, descending=True)
    before = sorted_lp.softmax(dim=-1).cumsum(dim=-1) - sorted_lp.softmax(dim=-1)  # mass of the better ones
    drop_sorted = before >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logprobs.masked_fill(drop, -torch.inf)


def _sample_candidates(
    logprobs: torch.Tensor, k2: int, gen: torch.Generator, banned, top_p: float = 1.0
) -> torch.Tensor:
    """``k2`` tokens per row sampled from ``softmax(logprobs)`` (banned tokens removed, cut to the
    ``top_p`` nucleus): without replacement when every row has ``k2`` candidates, else with (a repeated
    token makes a repeated child, which the seen set drops): ``[rows, k2]``."""
    lp = logprobs.masked_fill(_banned_mask(logprobs.shape[1], banned, logprobs.device), -torch.inf)
    probs = nucleus(lp, top_p).softmax(dim=-1)
    replace = bool(((probs > 0).sum(dim=-1) < k2).any())
    draws = torch.multinomial(probs.to(gen.device), k2, replacement=replace, generator=gen)
    return draws.to(logprobs.device)


def sample_swap(
    ids: torch.Tensor,
    logprobs: torch.Tensor,
    n: int,
    k2: int,
    gen: torch.Generator,
    banned: torch.Tensor | None = None,
    top_p: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace the token at a random position p >= 1 by one sampled from the distribution predicted at p-1
    (cut to its ``top_p`` nucleus).

    (The distribution predicted *at* p is about position p+1: drawing from it is a known bug of the seed
    notebook this operator comes from.)
    ``ids [L]`` (L >= 2), ``logprobs [L, V]`` -> ``children [n, L]``, ``positions [n]``.
    """
    L = len(ids)
    cand = _sample_candidates(logprobs[: L - 1], k2, gen, banned, top_p)  # row p-1 -> position p
    pos = torch.randint(1, L, (n,), generator=gen, device=gen.device).to(ids.device)
    pick = torch.randint(0, k2, (n,), generator=gen, device=gen.device).to(ids.device)
    children = ids.repeat(n, 1)
    children[torch.arange(n, device=ids.device), pos] = cand[pos - 1, pick]
    return children, pos


def sample_insert(
    ids: torch.Tensor,
    logprobs: torch.Tensor,
    n: int,
    k2: int,
    gen: torch.Generator,
    banned: torch.Tensor | None = None,
    top_p: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Insert at a random position q in 1..L a token sampled from the distribution predicted at q-1 (cut to
    its ``top_p`` nucleus).

    ``ids [L]``, ``logprobs [L, V]`` -> ``children [n, L+1]``, ``positions [n]`` (index of the new token).
    """
    L = len(ids)
    cand = _sample_candidates(logprobs[:L], k2, gen, banned, top_p)
    q = torch.randint(1, L + 1, (n,), generator=gen, device=gen.device).to(ids.device)
    pick = torch.randint(0, k2, (n,), generator=gen, device=gen.device).to(ids.device)
    j = torch.arange(L + 1, device=ids.device)[None, :]
    src = (j - (j > q[:, None]).long()).clamp(max=L - 1)
    children = ids[src]
    children[torch.arange(n, device=ids.device), q] = cand[q - 1, pick]
    return children, q


def delete(ids: torch.Tensor, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove one token: all ``L`` deletions if ``n >= L``, else ``n`` distinct random ones.

    ``ids [L]`` (L >= 2) -> ``children [min(n, L), L-1]``, ``positions [min(n, L)]``.
    """
    L = len(ids)
    pos = torch.randperm(L, generator=gen, device=gen.device)[: min(n, L)].to(ids.device)
    j = torch.arange(L - 1, device=ids.device)[None, :]
    src = j + (j >= pos[:, None]).long()
    return ids[src], pos


def head_trims(ids: torch.Tensor, min_tokens: int, most: int = 4) -> list[torch.Tensor]:
    """``ids [L]`` without its first ``k`` tokens, for ``k = 1..most`` while ``L - k >= min_tokens``: a
    readable-lane parent often opens on a fragment of a word (a cut from a dataset window), which no random
    edit removes quickly; the activating last token is kept."""
    return [ids[k:] for k in range(1, min(most, len(ids) - min_tokens) + 1)]
