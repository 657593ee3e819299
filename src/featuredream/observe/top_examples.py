"""A latent's top dataset examples and their minimal contexts.

A dataset example holds its whole context (corpus window start .. activating token) and its value in
that context; :func:`minimal_context` finds how much of it the feature needs (local or contextual).
:func:`top_examples` reads the SAE's shipped examples, or scans a user's own text files
(:func:`corpus_stats`: the statistics engine's tally, :mod:`featuredream.saes.tally`, over the files cut into
windows), in the layout of the shipped statistics, so ``stats.examples(latent)`` and the feature card read
either.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from ..checks import check_int
from ..models.padding import pad
from ..models.tl import as_model
from ..saes.activations import latent_values, model_device, site_activations, valid_positions
from ..saes.loading import BoundSAE, Example, FeatureStats
from ..saes.tally import corpus_statistics
from ..text.corpus import read_text_files

log = logging.getLogger(__name__)


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


# ---------------------------------------------------------------------------------------------- corpus scan


def _paths(corpus: str | Path | Sequence[str | Path]) -> list[Path]:
    return [Path(corpus)] if isinstance(corpus, str | Path) else [Path(c) for c in corpus]


def _read_corpus(corpus: str | Path | Sequence[str | Path]) -> list[str]:
    paths = _paths(corpus)
    if not paths:
        raise ValueError("corpus is empty: valid is one or more text files or directories of *.txt / *.md")
    for p in paths:
        if p.is_file():
            with open(p, "rb") as f:
                if b"\x00" in f.read(8192):
                    raise ValueError(f"corpus file {str(p)!r} is not text (binary data)")
    return read_text_files(paths)


@torch.no_grad()
def corpus_stats(
    model: nn.Module,
    tok,
    sae: BoundSAE,
    corpus: str | Path | Sequence[str | Path],
    *,
    ctx: int = 64,
    k: int = 8,
    batch_size: int = 32,
    after: int = 8,
    norm_guard: bool = True,
    progress: bool = True,
) -> FeatureStats:
    """Top-``k`` examples of **every** latent over a user's text files in one streaming pass: the tally of
    the statistics engine (:func:`featuredream.saes.tally.corpus_statistics`) over the files cut into
    non-overlapping ``ctx``-token windows. Ranks by encoder pre-activation, one example per window, like the
    shipped statistics, and returns the same :class:`FeatureStats` layout: ``top_tokens / top_acts [d_sae, k,
    ctx + after]`` (each example's whole context from its window's first token, so scored alone it
    reproduces its value, then ``after`` tokens), ``top_pos``, ``top_values``, ``max_activation``,
    ``max_projection`` and ``fire_rate`` (share of valid positions with a non-zero code)."""
    model = as_model(model, tok)
    for name, v, lo in (("ctx", ctx, 1), ("k", k, 1), ("batch_size", batch_size, 1), ("after", after, 0)):
        check_int(name, v, lo)
    docs = _read_corpus(corpus)
    stats = corpus_statistics(
        model,
        tok,
        sae,
        docs,
        ctx=ctx,
        k=k,
        after=after,
        batch=batch_size,
        norm_guard=norm_guard,
        progress=progress,
    )
    stats.info["corpus"] = [str(c) for c in _paths(corpus)]
    return stats


# ---------------------------------------------------------------------------------------------- top examples


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
    (see :func:`corpus_stats` for ``ctx``, ``batch_size``, ...)."""
    model = as_model(model, tok)
    f = sae.check_latent(feature)
    if corpus is None:
        if sae.stats is None:
            raise ValueError(f"SAE {sae.name!r} ships no dataset examples: pass corpus=<text files>")
        stats = sae.stats
    else:
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
    model = as_model(model, tok)
    f = sae.check_latent(feature)
    check_int("batch_size", batch_size)
    if any(len(s) == 0 for s in seqs):
        raise ValueError("a sequence to score is empty: valid are non-empty lists of token ids")
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    dev, out = model_device(model), torch.empty(len(seqs))
    for c in range(0, len(order), batch_size):
        chunk = order[c : c + batch_size]
        ids, mask = pad([seqs[i] for i in chunk], tok.pad_token_id, device=dev)
        x = site_activations(model, sae.site, ids, mask)  # [b, s, d_in]
        rows, last = torch.arange(len(chunk), device=dev), mask.sum(1) - 1
        ok = valid_positions(sae, x, mask, norm_guard)[rows, last]  # [b]
        v = latent_values(sae, x[rows, last], "pre")[:, f]  # [b]
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
    model = as_model(model, tok)
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
