"""Observation: what fires on a prompt, what separates two prompt sets, where a feature fires in a corpus.

Everything is batched: prompts are sorted by length, right-padded (or left-padded, with position ids
derived from the mask so that every real token sees the same positions as alone), and read at the SAE's
site with a forward pass that stops after that layer. ``last`` always means the last *real* token.

Values: ``"code"`` is the SAE's own sparse code (``sae.sae.encode``: after ReLU / TopK / threshold, so
"fires" means non-zero); ``"pre"`` is the encoder pre-activation, the quantity dreams maximize and the
shipped statistics record. Positions whose residual norm exceeds the SAE's norm cap (the "massive
activations" of the first token) never count: their codes are 0 and their pre-activations ``-inf``.

A dataset example holds its whole context (corpus window start .. activating token) and its value in
that context; :func:`minimal_context` finds how much of it the feature needs (local or contextual).

Tracing (logit effects, attribution, steering) lives in :mod:`featuredream.tracing`; the one-pass corpus
scan behind :func:`top_examples` in :mod:`featuredream.examples`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from tqdm.auto import tqdm

from ..lm.saes import BoundSAE
from ..lm.sites import Site, _StopForward, capture

log = logging.getLogger(__name__)

ENCODE_REDUCTIONS = ("last", "max", "mean", "all")
VALUES = ("code", "pre")


@dataclass
class FeatureRanking:
    """One row of a ranking: ``score`` is the activation (top features) or ``pos_mean - neg_mean``."""

    feature_id: int
    score: float
    pos_mean: float | None = None
    neg_mean: float | None = None
    pos_fire_rate: float | None = None
    neg_fire_rate: float | None = None


class Example(NamedTuple):
    """A dataset example: token ``ids``, ``index`` of the activating token, per-token ``acts``, ``value``.

    ``ids[: index + 1]`` is the example's whole context (its corpus window from the first token up to the
    activating token), ``ids[index + 1 :]`` a few tokens after it for display; ``value`` is the activation
    in that context, so scoring :attr:`context` alone reproduces it.
    """

    ids: list[int]
    index: int
    acts: list[float]
    value: float

    @property
    def context(self) -> list[int]:
        """The tokens up to and including the activating one."""
        return self.ids[: self.index + 1]


class MinimalContext(NamedTuple):
    """The shortest suffix of an example's context (ending at the activating token) that keeps a share of
    its in-context activation when scored alone (see :func:`minimal_context`).

    ``length``: its tokens; ``full``: the whole context's tokens; ``value``: its activation alone (``-inf``
    where the norm guard drops the position); ``found``: False when no suffix kept enough, and then
    ``length == full``.
    """

    length: int
    full: int
    value: float
    found: bool

    @property
    def start(self) -> int:
        """Index in the example's ids of the minimal context's first token."""
        return self.full - self.length


# ---------------------------------------------------------------------------------------------- encoding


def _check_prompts(prompts: Sequence[str], what: str = "prompts") -> list[str]:
    if isinstance(prompts, str):
        raise ValueError(f"{what} must be a list of strings, not the single string {prompts[:40]!r}")
    prompts = list(prompts)
    if not prompts:
        raise ValueError(f"{what} is empty: valid is a non-empty list of prompts")
    for p in prompts:
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"{what} holds an empty or non-string prompt {p!r}: valid are non-empty strings")
    return prompts


def _check_int(name: str, v: object, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name}={v!r} is invalid: valid is an integer >= {lo}")
    return v


def _choice(value: str, valid: Sequence[str], name: str) -> str:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}: valid are {', '.join(valid)}")
    return value


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def site_activations(model: nn.Module, site: Site, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Activation at ``site`` for padded ``ids [b, s]`` with ``mask [b, s]`` -> ``[b, s, width]``.

    Position ids come from the mask (``cumsum - 1``), so left padding gives each real token the position it
    has alone; the pass stops after ``site``'s layer.
    """
    pos = (mask.long().cumsum(1) - 1).clamp_min(0)
    with capture(model, [site]) as store:
        try:
            model(input_ids=ids, attention_mask=mask.long(), position_ids=pos, use_cache=False)
        except _StopForward:
            pass
    x = store[site]
    return x.reshape(*x.shape[:2], -1)


def _valid(sae: BoundSAE, x: torch.Tensor, mask: torch.Tensor, norm_guard: bool) -> torch.Tensor:
    """``[b, s]`` bool: real tokens under the SAE's norm cap."""
    cap = sae.stats.norm_cap if (norm_guard and sae.stats is not None) else None
    return mask if cap is None else mask & (x.float().norm(dim=-1) <= cap)


def _values(sae: BoundSAE, x: torch.Tensor, values: str) -> torch.Tensor:
    """``[..., d_in] -> [..., d_sae]`` float32 codes or pre-activations."""
    if values == "pre":
        return sae.pre_activation(x).float()
    return sae.sae.encode(x.to(sae.sae.W_enc.dtype)).float()


def tokenize(tok, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt (no special tokens, as everywhere in featuredream); ValueError if empty."""
    enc = tok(list(prompts), add_special_tokens=False)["input_ids"]
    for p, ids in zip(prompts, enc):
        if not ids:
            raise ValueError(f"prompt {p!r} tokenizes to no tokens")
    return enc


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "right", device=None):
    """Lists of ids -> ``ids [b, s]`` and ``mask [b, s]`` (bool), padded on ``side``."""
    _choice(side, ("right", "left"), "padding side")
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.bool)
    for i, s in enumerate(seqs):
        sl = slice(0, len(s)) if side == "right" else slice(n - len(s), n)
        ids[i, sl] = torch.tensor(list(s), dtype=torch.long)
        mask[i, sl] = True
    return ids.to(device), mask.to(device)


def encode_prompts(
    model: nn.Module,
    tok,
    sae: BoundSAE,
    prompts: Sequence[str],
    reduce: str = "last",
    *,
    values: str = "code",
    batch_size: int = 32,
    padding_side: str = "right",
    norm_guard: bool = True,
) -> torch.Tensor | list[torch.Tensor]:
    """Feature values of each prompt at the SAE's site (see module doc), batched.

    Returns ``[n_prompts, d_sae]`` (float32, CPU) for ``last`` / ``max`` / ``mean``, or for ``all`` a list
    of ``[n_tokens_i, d_sae]``. Excluded positions (norm cap) count as not firing.
    """
    from ..engine.objectives import last_real_index

    prompts = _check_prompts(prompts)
    _choice(reduce, ENCODE_REDUCTIONS, "reduction")
    _choice(values, VALUES, "values")
    _check_int("batch_size", batch_size)
    seqs = tokenize(tok, prompts)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    dev = _device(model)
    off = 0.0 if values == "code" else -torch.inf
    out: list[torch.Tensor | None] = [None] * len(seqs)
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for chunk in tqdm(chunks, desc="encode", unit="batch", disable=len(chunks) < 4, leave=False):
        ids, mask = pad_batch([seqs[i] for i in chunk], tok.pad_token_id, padding_side, dev)
        x = site_activations(model, sae.site, ids, mask)
        valid = _valid(sae, x, mask, norm_guard)
        v = _values(sae, x, values).masked_fill(~valid[..., None], off)  # [b, s, d_sae]
        if reduce == "last":
            r = v[torch.arange(len(chunk), device=dev), last_real_index(mask)]
        elif reduce == "max":
            r = v.max(dim=1).values
        elif reduce == "mean":
            n = valid.sum(1, keepdim=True)
            r = v.masked_fill(~valid[..., None], 0.0).sum(1) / n.clamp_min(1)
            r = r.masked_fill(n == 0, off)
        for j, i in enumerate(chunk):
            out[i] = v[j][mask[j]].cpu() if reduce == "all" else r[j].cpu()
    return out if reduce == "all" else torch.stack(out)


# ---------------------------------------------------------------------------------------------- rankings


def _fires(codes: torch.Tensor) -> torch.Tensor:
    return (codes > 0).float()


def rank_top(codes: torch.Tensor, n: int = 10) -> list[FeatureRanking]:
    """The ``n`` largest positive entries of ``codes [d_sae]``."""
    nz = (codes > 0).nonzero().squeeze(1)
    order = codes[nz].argsort(descending=True, stable=True)[:n]
    return [FeatureRanking(int(nz[i]), float(codes[nz[i]])) for i in order]


def rank_differential(pos_codes: torch.Tensor, neg_codes: torch.Tensor, n: int = 20) -> list[FeatureRanking]:
    """Features ranked by ``mean(pos) - mean(neg)`` over ``pos_codes [P, d]``, ``neg_codes [N, d]``.

    Fire rate = fraction of prompts with a positive value.
    """
    if pos_codes.shape[1:] != neg_codes.shape[1:]:
        raise ValueError(f"feature width mismatch: {tuple(pos_codes.shape)} vs {tuple(neg_codes.shape)}")
    pm, nm = pos_codes.mean(0), neg_codes.mean(0)
    pf, nf = _fires(pos_codes).mean(0), _fires(neg_codes).mean(0)
    diff = pm - nm
    order = diff.argsort(descending=True, stable=True)[:n]
    return [
        FeatureRanking(int(i), float(diff[i]), float(pm[i]), float(nm[i]), float(pf[i]), float(nf[i]))
        for i in order
    ]


def top_features(
    model: nn.Module, tok, sae: BoundSAE, prompt: str, n: int = 10, reduce: str = "last", values: str = "code"
) -> list[FeatureRanking]:
    """The ``n`` strongest features on one prompt (``reduce`` over its positions)."""
    if reduce == "all":
        raise ValueError("unknown reduction 'all' for top_features: valid are last, max, mean")
    codes = encode_prompts(model, tok, sae, [prompt], reduce, values=values)[0]
    return rank_top(codes, _check_int("n", n))


def differential_features(
    model: nn.Module,
    tok,
    sae: BoundSAE,
    pos_prompts: Sequence[str],
    neg_prompts: Sequence[str],
    n: int = 20,
    reduce: str = "last",
    values: str = "code",
) -> list[FeatureRanking]:
    """Features that separate ``pos_prompts`` from ``neg_prompts``: means and fire rates of both sets."""
    _check_int("n", n)
    pos = _check_prompts(pos_prompts, "positive prompts")
    neg = _check_prompts(neg_prompts, "negative prompts")
    codes = encode_prompts(model, tok, sae, pos + neg, reduce, values=values)
    return rank_differential(codes[: len(pos)], codes[len(pos) :], n)


def scan(
    model: nn.Module,
    tok,
    sae: BoundSAE,
    prompts: Sequence[str],
    feature: int,
    reduce: str = "max",
    values: str = "pre",
) -> torch.Tensor | list[torch.Tensor]:
    """The feature on each prompt: ``[n_prompts]``, or per token (``reduce='all'``) a list of ``[n_i]``."""
    f = sae.check_latent(feature)
    codes = encode_prompts(model, tok, sae, prompts, reduce, values=values)
    return [c[:, f] for c in codes] if reduce == "all" else codes[:, f]


def fire_rate(
    model: nn.Module, tok, sae: BoundSAE, prompts: Sequence[str], feature: int, reduce: str = "last"
) -> float:
    """Fraction of prompts on which the feature's code is non-zero (at the reduced position)."""
    if reduce == "all":
        raise ValueError("unknown reduction 'all' for fire_rate: valid are last, max, mean")
    return float(_fires(scan(model, tok, sae, prompts, feature, reduce, values="code")).mean())


def format_ranking(rankings: Sequence[FeatureRanking], title: str | None = None) -> str:
    """A readable table (seed 000's ``pretty_ranking`` with a header)."""
    diff = any(r.pos_mean is not None for r in rankings)
    if diff:
        head = (
            f"{'feature':>8}  {'diff':>9}  {'pos_mean':>9}  {'neg_mean':>9}  {'pos_fire':>8}  {'neg_fire':>8}"
        )
        rows = [
            f"{r.feature_id:>8d}  {r.score:>+9.4f}  {r.pos_mean:>+9.4f}  {r.neg_mean:>+9.4f}  "
            f"{r.pos_fire_rate:>8.2f}  {r.neg_fire_rate:>8.2f}"
            for r in rankings
        ]
    else:
        head = f"{'feature':>8}  {'activation':>10}"
        rows = [f"{r.feature_id:>8d}  {r.score:>+10.4f}" for r in rankings]
    lines = ([title] if title else []) + [head, "-" * len(head)] + (rows or ["(no feature fired)"])
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- examples


def top_examples(
    model: nn.Module,
    tok,
    sae: BoundSAE,
    feature: int,
    corpus: str | Path | Sequence[str | Path] | None = None,
    *,
    k: int = 8,
    **kwargs,
) -> list[Example]:
    """Top examples of ``feature``: the SAE's shipped ones (``corpus=None``) or a scan of a user's text files
    (see :func:`featuredream.examples.corpus_stats` for ``ctx``, ``batch_size``, ...)."""
    f = sae.check_latent(feature)
    if corpus is None:
        if sae.stats is None:
            raise ValueError(f"SAE {sae.name!r} ships no dataset examples: pass corpus=<text files>")
        stats = sae.stats
    else:
        from .examples import corpus_stats

        stats = corpus_stats(model, tok, sae, corpus, k=k, **kwargs)
    return [Example(*e) for e in stats.examples(f)[:k]]


@torch.no_grad()
def last_token_values(
    model: nn.Module,
    tok,
    sae: BoundSAE,
    feature: int,
    seqs: Sequence[Sequence[int]],
    *,
    batch_size: int = 64,
    norm_guard: bool = True,
) -> torch.Tensor:
    """Encoder pre-activation of ``feature`` at the last token of each of ``seqs`` (lists of ids), each
    scored alone -> ``[n]`` float32 on the CPU; ``-inf`` where the norm guard drops that position.

    Runs right-padded batches of ``batch_size`` sequences of similar lengths up to the SAE's site.
    """
    f = sae.check_latent(feature)
    _check_int("batch_size", batch_size)
    if any(len(s) == 0 for s in seqs):
        raise ValueError("a sequence to score is empty: valid are non-empty lists of token ids")
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    dev, out = _device(model), torch.empty(len(seqs))
    for c in range(0, len(order), batch_size):
        chunk = order[c : c + batch_size]
        ids, mask = pad_batch([seqs[i] for i in chunk], tok.pad_token_id, "right", dev)
        x = site_activations(model, sae.site, ids, mask)  # [b, s, d_in]
        rows, last = torch.arange(len(chunk), device=dev), mask.sum(1) - 1
        ok = _valid(sae, x, mask, norm_guard)[rows, last]  # [b]
        v = _values(sae, x[rows, last], "pre")[:, f]  # [b]
        out[chunk] = v.masked_fill(~ok, -torch.inf).cpu()
    return out


def minimal_context(
    model: nn.Module,
    tok,
    sae: BoundSAE,
    feature: int,
    examples: Sequence[Example | tuple],
    keep: float = 0.9,
    *,
    batch_size: int = 64,
    norm_guard: bool = True,
) -> list[MinimalContext]:
    """For each example, the shortest suffix of its context (``ids[: index + 1]``, so ending at the
    activating token) whose activation scored alone keeps ``keep`` of the in-context ``value``: at least
    ``value - (1 - keep) * |value|`` (``keep * value`` for a positive value).

    Every suffix of every example is scored (:func:`last_token_values`; the activation is not monotone in
    the length). Where none keeps enough (e.g. the norm guard drops the short ones) the full context is
    reported with ``found=False``. Length 1: the feature reads the token alone; near the full length: it
    reads the context.
    """
    if isinstance(keep, bool) or not isinstance(keep, int | float) or not 0 < keep <= 1:
        raise ValueError(f"keep={keep!r} is invalid: valid is a share in (0, 1], e.g. 0.9")
    exs = [Example(*e) for e in examples]
    for e in exs:
        if not 0 <= e.index < len(e.ids):
            raise ValueError(f"example index {e.index} is outside its {len(e.ids)} tokens")
    # suffixes of lengths 1..n of each context, in that order
    seqs = [e.context[len(e.context) - n :] for e in exs for n in range(1, len(e.context) + 1)]
    vals = last_token_values(model, tok, sae, feature, seqs, batch_size=batch_size, norm_guard=norm_guard)
    out, at = [], 0
    for e in exs:
        n = e.index + 1
        v, at = vals[at : at + n], at + n  # v[m - 1]: the suffix of length m
        hit = (v >= e.value - (1 - keep) * abs(e.value)).nonzero()
        m = int(hit[0]) + 1 if len(hit) else n
        out.append(MinimalContext(m, n, float(v[m - 1]), bool(len(hit))))
    return out
