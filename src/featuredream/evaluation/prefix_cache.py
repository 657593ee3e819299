"""Prefix key/value cache: children reuse their parent's forward pass for the prefix they share with it.

Every mutation operator keeps the parent's tokens up to the edited position, and in a causal model the
activations, keys and values at a position depend only on the tokens up to it. So the K parents of one
iteration (one per feature; K = 1 for a single dream) run once, right-padded, with a key/value cache (to
the objective's layer, or through the head when XE is needed), and a child whose first ``p`` tokens equal
**its own** parent's runs only from position ``p``, on its parent's cache rows cut to ``p`` positions. A
parent row's positions ``< p`` are real tokens of that parent (``p <= len(parent)``), so padding never
reaches a child. The child's activations at positions ``< p`` are its parent's; its XE is the parent's
per-token loss on positions ``< p - 1``, plus the loss of its own token ``p`` under the parent's logits at
``p - 1``, plus the losses on its tail.

Children are grouped in buckets of nearby ``p`` (each bucket is one forward pass from the bucket's
smallest ``p``, mixing children of different parents); :func:`plan_buckets` chooses them by dynamic
programming on a cost of child tokens run plus a fixed cost per forward pass (``BUCKET_OVERHEAD``, in child
tokens).

Only objectives whose sites are per-position activations ``[b, s, ...]`` can use this, and only models with a transformers key/value cache (:func:`supports_prefix`); the evaluator falls back to
the plain path for anything else.
"""

from __future__ import annotations

import functools
import inspect
from typing import NamedTuple

import torch
from torch import nn

from ..models.padding import pad
from ..models.sites import Site, forward_with_capture
from ..models.xe import token_xe

PER_POSITION_KINDS = (
    "resid_pre",
    "resid_post",
    "mlp_out",
    "attn_q",
    "attn_q_rot",
    "attn_k",
    "attn_v",
    "attn_z",
)
"""Site kinds captured as ``[b, s, ...]`` with position ``t`` depending only on tokens ``<= t``."""

PREFIX_MIN_CHILDREN = {"cpu": 48, "cuda": 0}
"""The loop uses the parents' caches only for iterations with at least this many fresh children (all
features together). CPU: measured on the free 2-core machine (benchmarks/prefix_cache_threshold.json,
16-token parent, no cache / cache): 0.90-1.00x at 24, 0.92-1.00x at 32, 1.03-1.14x at 48 children
(benchmarks/prefix_cache.json: 1.13-1.23x at 64). 64 children made leave 46-61 fresh ones, so the CPU
default mostly uses the cache. CUDA: left to the bucket planner (not measured)."""

BUCKET_OVERHEAD = {"cpu": 32, "cuda": 2048}
"""Fixed cost of one more forward pass, in child tokens. CPU (SmolLM2-135M to layer 12, one thread):
~70 ms per pass against ~2.5 ms per token (benchmarks/prefix_cache.py). GPU: not measured; a small pass
is bound by kernel launches, so this is set high enough that 128 x 16 batches run without the cache
unless a benchmark on the GPU says otherwise."""


def supports_prefix(objective, model: nn.Module | None = None) -> bool:
    """True when every site the objective reads is a per-position activation and ``model`` (when given) runs
    with a transformers key/value cache of the ids alone (a TransformerLens adapter and a BOS-conditioned
    model, lm/bos.py, say ``hf_kv_cache = False``)."""
    return all(s.kind in PER_POSITION_KINDS for s in objective.sites) and getattr(model, "hf_kv_cache", True)


class Bucket(NamedTuple):
    """Children run in one forward pass from position ``start`` (the first ``start`` tokens come from
    their parents' cache; 0: no cache), ``rows [n]`` their indices in the batch."""

    start: int
    rows: torch.Tensor


class Tail(NamedTuple):
    """Children run from a cached prefix: ``acts`` (``[n, s, ...]`` per site, whole length) and, when the
    logits were needed, ``xe [n]`` and ``peak [n]`` (the mean and the largest token surprisal)."""

    acts: dict
    xe: torch.Tensor | None
    peak: torch.Tensor | None


def plan_buckets(
    prefix: torch.Tensor, lengths: torch.Tensor, overhead: float, parent_len: int | None = None
) -> list[Bucket]:
    """Group children into forward passes (:class:`Bucket` each, run from position ``start``).

    ``prefix [b]``, ``lengths [b]``. Minimizes ``sum(n_bucket * (max_len_bucket - p) + overhead)`` over
    contiguous groups of sorted prefix values; returns one bucket with ``p = 0`` (no cache) when that is
    cheaper than the best plan plus a parent pass of ``parent_len`` tokens.
    """
    pre, lens = prefix.tolist(), lengths.tolist()
    ps = sorted(set(pre))
    cnt = dict.fromkeys(ps, 0)
    mx = dict.fromkeys(ps, 0)
    for p, n in zip(pre, lens):
        cnt[p] += 1
        mx[p] = max(mx[p], n)
    m = len(ps)
    best, cut = [0.0] + [float("inf")] * m, [0] * (m + 1)
    for j in range(1, m + 1):
        n = smax = 0
        for i in range(j - 1, -1, -1):  # bucket = groups i .. j-1, run from ps[i]
            n, smax = n + cnt[ps[i]], max(smax, mx[ps[i]])
            c = best[i] + n * (smax - ps[i]) + overhead
            if c < best[j]:
                best[j], cut[j] = c, i
    plain = len(pre) * max(lens) + overhead
    if parent_len is not None and ps[-1] > 0 and best[m] + parent_len + overhead >= plain:
        return [Bucket(0, torch.arange(len(pre), device=prefix.device))]
    groups: list[tuple[int, int]] = []
    j = m
    while j > 0:
        groups.append((cut[j], j))
        j = cut[j]
    out = []
    for i, j in reversed(groups):
        members = torch.tensor(
            [k for k, p in enumerate(pre) if ps[i] <= p <= ps[j - 1]], device=prefix.device
        )
        out.append(Bucket(ps[i], members))
    return out


def _forward(
    model: nn.Module, sites, logits: bool, cache, **kwargs
) -> tuple[dict, torch.Tensor | None, object]:
    """One forward pass with the key/value ``cache`` (filled in place); stops after the last site unless
    ``logits``. Returns acts, logits, cache."""
    kwargs[cache_argument(model)] = cache
    acts, out = forward_with_capture(model, sites, stop_early=not logits, use_cache=True, **kwargs)
    return acts, (out.logits if out is not None and logits else None), cache


def cache_argument(model: nn.Module) -> str:
    """The name ``model.forward`` takes its key/value cache by: ``cache`` in recent transformers (which
    deprecates ``past_key_values`` with a warning), ``past_key_values`` before (read once per class)."""
    return _cache_argument_of(type(model))


@functools.cache
def _cache_argument_of(cls: type) -> str:
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


class ParentsRun(NamedTuple):
    """K parents' cached pass: ``ids [K, L]`` (right-padded), ``lengths [K]``, ``acts`` (``[K, L, ...]`` per
    site), ``kv`` (per layer run, ``[K, H_kv, L, d_head]`` keys and values), and when XE is needed
    ``logprobs [K, L, V]``, ``nll_before [K, L]`` (summed loss of tokens ``1..t`` of each parent) and
    ``peak_before [K, L]`` (their largest)."""

    ids: torch.Tensor
    lengths: torch.Tensor
    acts: dict[Site, torch.Tensor]
    kv: list[tuple[torch.Tensor, torch.Tensor]]
    logprobs: torch.Tensor | None
    nll_before: torch.Tensor | None
    peak_before: torch.Tensor | None = None


@torch.no_grad()
def run_parents(model: nn.Module, sites, parents: list[torch.Tensor], *, logits: bool) -> ParentsRun:
    """Run the ``K`` parents (``[L_k]`` each) once, right-padded, with a key/value cache."""
    from transformers import DynamicCache

    dev = next(model.parameters()).device
    ids, mask = pad([p.to(dev) for p in parents], 0, device=dev)
    lengths = mask.sum(1)
    # no config: every layer keeps all positions. A sliding-window layer's cache (DynamicCache(config=...),
    # Gemma) keeps only the last window, which cannot be cut at a child's p (tests/lm/test_gemma3.py).
    acts, lg, cache = _forward(model, sites, logits, DynamicCache(), input_ids=ids)
    kv = [(item[0], item[1]) for item in cache]
    if lg is None:
        return ParentsRun(ids, lengths, acts, kv, None, None)
    logprobs = torch.log_softmax(lg.float(), dim=-1)
    nll = -logprobs[:, :-1].gather(2, ids[:, 1:, None]).squeeze(2)  # [K, L-1]; padding never read
    zero = nll.new_zeros(len(ids), 1)
    peak = torch.cat([zero, nll.cummax(1).values], 1) if nll.shape[1] else zero
    return ParentsRun(ids, lengths, acts, kv, logprobs, torch.cat([zero, nll.cumsum(1)], 1), peak)


def shared_prefixes(
    parents: torch.Tensor,
    parent_lengths: torch.Tensor,
    rows: torch.Tensor,
    ids: torch.Tensor,
    lengths: torch.Tensor,
) -> torch.Tensor:
    """Positions each child shares with its own parent from the start, capped so one token is left to run.

    ``parents [K, L]``, ``parent_lengths [K]``, ``rows [b]`` (each child's parent row; ``-1``: no parent,
    prefix 0), ``ids [b, s]``, ``lengths [b]`` -> ``prefix [b]`` in ``0..lengths-1``.
    """
    m = min(parents.shape[1], ids.shape[1])
    pos = torch.arange(m, device=ids.device)
    has = rows >= 0
    rows = rows.clamp_min(0)
    real = (pos[None, :] < lengths[:, None]) & (pos[None, :] < parent_lengths[rows][:, None]) & has[:, None]
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
) -> Tail:
    """Children ``ids [n, s]`` (``lengths [n] > p``), child ``i`` sharing the first ``p >= 1`` tokens of
    parent ``rows[i]``: their :class:`Tail` (XE and peak only with ``logits``)."""
    from transformers import DynamicCache

    def take(t: torch.Tensor) -> torch.Tensor:
        """Each child's parent row of ``t [K, ...]``; one parent: a broadcast view, no copy."""
        return t.expand(len(rows), *t.shape[1:]) if len(t) == 1 else t[rows]

    cache = DynamicCache([(take(k[:, :, :p]), take(v[:, :, :p])) for k, v in par.kv])
    tail = ids[:, p:]
    # explicit positions p..: models with absolute position embeddings (GPT-2) need them even when the
    # parent's pass stopped before any layer ran (an empty cache would restart them at 0)
    pos = torch.arange(p, ids.shape[1], device=ids.device)[None].expand(len(ids), -1)
    acts, lg, _ = _forward(model, sites, logits, cache, input_ids=tail, position_ids=pos)
    full = {site: torch.cat([take(par.acts[site][:, :p]).to(a.dtype), a], dim=1) for site, a in acts.items()}
    if lg is None:
        return Tail(full, None, None)
    tail_mask = torch.arange(tail.shape[1], device=ids.device)[None, :] < (lengths - p)[:, None]
    xe_tail, _ = token_xe(lg, tail, tail_mask)  # [n, s-p-1], 0 where not counted
    # each child's token p under its parent's logits at p - 1 (one parent: a view, not n copies of [V])
    boundary = -take(par.logprobs[:, p - 1]).gather(1, ids[:, p : p + 1]).squeeze(1)
    total = take(par.nll_before[:, p - 1]) + boundary + xe_tail.sum(dim=1)
    tail_peak = xe_tail.amax(dim=1) if xe_tail.shape[1] else torch.zeros_like(boundary)  # uncounted: 0
    peak = torch.maximum(torch.maximum(take(par.peak_before[:, p - 1]), boundary), tail_peak)
    return Tail(full, total / (lengths - 1).clamp_min(1), peak)
