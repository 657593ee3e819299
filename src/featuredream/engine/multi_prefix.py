"""Prefix key/value cache for the children of K parents at once (the multi-feature evaluator's fast path).

:mod:`featuredream.prefix_cache` for one parent, generalized to K: the K parents run once, right-padded in
one cached forward pass; a child whose first ``p`` tokens equal **its own** parent's runs only from
position ``p`` on its parent's cache rows cut to ``p`` positions. Buckets of nearby ``p`` (planned by
:func:`featuredream.prefix_cache.plan_buckets`) mix children of different parents, so K features'
children still share forward passes. A parent row's positions ``< p`` are real tokens of that parent
(``p <= len(parent)``), so the padding never reaches a child. XE is assembled as in
:func:`featuredream.prefix_cache.run_tail`: the parent's loss before ``p``, the child's token ``p`` under
the parent's logits at ``p - 1``, and the tail's own losses.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .evaluate import pad_right
from .fluency import token_xe
from .prefix_cache import _forward
from ..lm.sites import Site


class ParentsRun(NamedTuple):
    """K parents' cached pass: ``ids [K, L]`` (right-padded), ``lengths [K]``, ``acts`` (``[K, L, ...]`` per
    site), ``kv`` (per layer run, ``[K, H_kv, L, d_head]`` keys and values), and when XE is needed
    ``logprobs [K, L, V]`` and ``nll_before [K, L]`` (summed loss of tokens ``1..t`` of each parent)."""

    ids: torch.Tensor
    lengths: torch.Tensor
    acts: dict[Site, torch.Tensor]
    kv: list[tuple[torch.Tensor, torch.Tensor]]
    logprobs: torch.Tensor | None
    nll_before: torch.Tensor | None


@torch.no_grad()
def run_parents(model: nn.Module, sites, parents: list[torch.Tensor], *, logits: bool) -> ParentsRun:
    """Run the ``K`` parents (``[L_k]`` each) once, right-padded, with a key/value cache."""
    from transformers import DynamicCache

    dev = next(model.parameters()).device
    ids, lengths = pad_right([p.to(dev) for p in parents], 0, dev)
    acts, lg, cache = _forward(model, sites, logits, input_ids=ids, past_key_values=DynamicCache())
    kv = [(item[0], item[1]) for item in cache]
    if lg is None:
        return ParentsRun(ids, lengths, acts, kv, None, None)
    logprobs = torch.log_softmax(lg.float(), dim=-1)
    nll = -logprobs[:, :-1].gather(2, ids[:, 1:, None]).squeeze(2)  # [K, L-1]; padding never read
    return ParentsRun(
        ids, lengths, acts, kv, logprobs, torch.cat([nll.new_zeros(len(ids), 1), nll.cumsum(1)], 1)
    )


def shared_prefixes(
    parents: torch.Tensor,
    parent_lengths: torch.Tensor,
    rows: torch.Tensor,
    ids: torch.Tensor,
    lengths: torch.Tensor,
) -> torch.Tensor:
    """Positions each child shares with its own parent from the start, capped so one token is left to run.

    ``parents [K, L]``, ``parent_lengths [K]``, ``rows [b]`` (each child's parent), ``ids [b, s]``,
    ``lengths [b]`` -> ``prefix [b]`` in ``0..lengths-1``.
    """
    m = min(parents.shape[1], ids.shape[1])
    pos = torch.arange(m, device=ids.device)
    real = (pos[None, :] < lengths[:, None]) & (pos[None, :] < parent_lengths[rows][:, None])
    same = (ids[:, :m] == parents[rows, :m]) & real
    return torch.minimum(same.long().cumprod(dim=1).sum(dim=1), lengths - 1)


@torch.no_grad()
def run_tails(
    model: nn.Module,
    sites,
    par: ParentsRun,
    rows: torch.Tensor,
    p: int,
    ids: torch.Tensor,
    lengths: torch.Tensor,
    *,
    logits: bool,
) -> tuple[dict[Site, torch.Tensor], torch.Tensor | None]:
    """Children ``ids [n, s]`` (``lengths [n] > p``), child ``i`` sharing the first ``p >= 1`` tokens of
    parent ``rows[i]``. Returns full-length acts (``[n, s, ...]`` per site) and, with ``logits``, ``xe [n]``."""
    from transformers import DynamicCache

    cache = DynamicCache([(k[rows, :, :p], v[rows, :, :p]) for k, v in par.kv])
    tail = ids[:, p:]
    # explicit positions p..: models with absolute position embeddings (GPT-2) need them even when the
    # parent's pass stopped before any layer ran (an empty cache would restart them at 0)
    pos = torch.arange(p, ids.shape[1], device=ids.device)[None].expand(len(ids), -1)
    acts, lg, _ = _forward(model, sites, logits, input_ids=tail, past_key_values=cache, position_ids=pos)
    full = {site: torch.cat([par.acts[site][rows, :p].to(a.dtype), a], dim=1) for site, a in acts.items()}
    if lg is None:
        return full, None
    tail_mask = torch.arange(tail.shape[1], device=ids.device)[None, :] < (lengths - p)[:, None]
    xe_tail, _ = token_xe(lg, tail, tail_mask)  # [n, s-p-1], 0 where not counted
    boundary = -par.logprobs[rows, p - 1].gather(1, ids[:, p : p + 1]).squeeze(1)
    total = par.nll_before[rows, p - 1] + boundary + xe_tail.sum(dim=1)
    return full, total / (lengths - 1).clamp_min(1)
