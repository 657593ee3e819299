"""Dataset examples: a feature's top examples, their minimal contexts, and the corpus scan behind them.

A dataset example holds its whole context (corpus window start .. activating token) and its value in
that context; :func:`minimal_context` finds how much of it the feature needs (local or contextual).
:func:`top_examples` reads the SAE's shipped examples, or scans a user's own text files
(:func:`corpus_stats`): the top-k windows of **every** latent in one streaming pass.

Documents are cut into non-overlapping ``ctx``-token windows (a document's tail is a shorter window),
run in right-padded batches to the SAE's site, and each latent keeps its ``k`` best windows (one example
per window, ranked by encoder pre-activation; positions over the norm cap never count), with the tokens
and per-token activations of its whole context (by default: from the window's first token to the
activating one, so scoring ``ids[: pos + 1]`` alone reproduces the value) and a few tokens after it. The
result has the layout of the statistics shipped with the default SAEs, so ``stats.examples(latent)`` and
the feature card read either.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from tqdm.auto import tqdm

from ..checks import check_int
from ..lm.activations import latent_values, model_device, pad_batch, site_activations, valid_positions
from ..lm.corpus import read_text_files
from ..lm.saes import BoundSAE, FeatureStats
from ..lm.tl import as_model

log = logging.getLogger(__name__)


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


def _windows(tok, docs: list[str], ctx: int, batch: int) -> Iterator[tuple[list[list[int]], int]]:
    """Batches of non-overlapping ``ctx``-token windows (a document's tail is a shorter window)."""
    buf: list[list[int]] = []
    for d, text in enumerate(docs):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        for i in range(0, len(ids), ctx):
            buf.append(ids[i : i + ctx])
            if len(buf) == batch:
                yield buf, d
                buf = []
    if buf:
        yield buf, len(docs) - 1


def _left_align(grid_tok: torch.Tensor, grid_act: torch.Tensor, before: int):
    """``[..., w]`` windows centred at index ``before`` with -1 outside the text -> left-aligned + index."""
    w = grid_tok.shape[-1]
    lead = (grid_tok < 0).long().cumprod(-1).sum(-1)  # [...]
    src = torch.arange(w) + lead[..., None]
    ok = src < w
    tok = torch.where(ok, grid_tok.gather(-1, src.clamp(max=w - 1)), -1)
    act = torch.where(ok, grid_act.gather(-1, src.clamp(max=w - 1)), 0.0)
    return tok, act, before - lead


@dataclass
class _Top:
    """The running top-k of :func:`corpus_stats`: ``values [k, d]`` (-inf: none yet), the example windows'
    ``tokens`` and ``acts [k, d, w]`` around each activating token, fire counts, valid positions."""

    values: torch.Tensor
    tokens: torch.Tensor
    acts: torch.Tensor
    fires: torch.Tensor
    n_pos: int = 0

    @classmethod
    def empty(cls, k: int, d: int, w: int, dev) -> _Top:
        return cls(
            torch.full((k, d), -torch.inf, device=dev),
            torch.full((k, d, w), -1, dtype=torch.long, device=dev),
            torch.zeros((k, d, w), device=dev),
            torch.zeros(d, device=dev),
        )

    def merge(self, ids: torch.Tensor, mask: torch.Tensor, pre: torch.Tensor, offs: torch.Tensor) -> None:
        """Merge a batch's window maxima (``pre [b, s, d]``, -inf off valid positions) into the top-k."""
        k, d, w = self.tokens.shape
        m, p = pre.max(dim=1)  # [b, d]
        top_v, idx = torch.cat([self.values, m]).topk(k, dim=0)  # [k, d]
        new = idx >= k
        old = idx.clamp(max=k - 1)[..., None].expand(k, d, w)
        bi = (idx - k).clamp_min(0)
        grid = p.gather(0, bi)[..., None] + offs  # [k, d, w]
        inside = (grid >= 0) & (grid < mask.sum(1)[bi][..., None])
        b3, g3 = bi[..., None].expand(k, d, w), grid.clamp(0, ids.shape[1] - 1)
        lat = torch.arange(d, device=ids.device)[None, :, None].expand(k, d, w)
        new_tok = torch.where(inside, ids[b3, g3], -1)
        new_act = torch.where(inside, pre[b3, g3, lat].nan_to_num(0.0, neginf=0.0), 0.0)
        self.tokens = torch.where(new[..., None], new_tok, self.tokens.gather(0, old))
        self.acts = torch.where(new[..., None], new_act, self.acts.gather(0, old))
        self.values = top_v

    def tensors(self, before: int) -> dict[str, torch.Tensor]:
        """The :class:`FeatureStats` tensors, examples left-aligned at their first kept token."""
        tok_l, act_l, pos = _left_align(self.tokens.cpu(), self.acts.cpu(), before)
        found = torch.isfinite(self.values.cpu())
        return {
            "max_activation": self.values[0].cpu(),
            "fire_rate": self.fires.cpu() / max(self.n_pos, 1),
            "top_tokens": torch.where(found[..., None], tok_l, -1).permute(1, 0, 2).int().contiguous(),
            "top_acts": act_l.permute(1, 0, 2).contiguous(),
            "top_pos": torch.where(found, pos, -1).T.contiguous(),
            "top_values": self.values.cpu().T.contiguous(),
        }


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
    before: int | None = None,
    after: int = 8,
    norm_guard: bool = True,
    progress: bool = True,
) -> FeatureStats:
    """Top-``k`` examples of **every** latent over a user's text files in one streaming pass.

    Ranks by encoder pre-activation, one example per window, like the shipped statistics; returns a
    :class:`FeatureStats` with ``top_tokens / top_acts [d_sae, k, before+1+after]``, ``top_pos``,
    ``top_values [d_sae, k]``, ``max_activation`` and ``fire_rate`` (share of positions with a non-zero code).
    ``before``: tokens kept before the activating one; None (default) keeps the whole context from the
    window's first token (``before = ctx - 1``), so every example scored alone reproduces its value.
    """
    model = as_model(model, tok)
    for name, v, lo in (("ctx", ctx, 1), ("k", k, 1), ("batch_size", batch_size, 1), ("after", after, 0)):
        check_int(name, v, lo)
    if before is not None:
        check_int("before", before, 0)
    whole = before is None
    before = ctx - 1 if whole else before
    docs = _read_corpus(corpus)
    dev, w = model_device(model), before + 1 + after
    top = _Top.empty(k, sae.d_sae, w, dev)
    offs = torch.arange(-before, after + 1, device=dev)
    bar = tqdm(total=len(docs), desc="top examples", unit="doc", disable=not progress)
    for seqs, doc in _windows(tok, docs, ctx, batch_size):
        ids, mask = pad_batch(seqs, tok.pad_token_id, "right", dev)
        x = site_activations(model, sae.site, ids, mask)
        valid = valid_positions(sae, x, mask, norm_guard)
        top.n_pos += int(valid.sum())
        top.fires += ((latent_values(sae, x, "code") > 0) & valid[..., None]).sum((0, 1)).float()
        pre = latent_values(sae, x, "pre").masked_fill(~valid[..., None], -torch.inf)  # [b, s, d]
        top.merge(ids, mask, pre, offs)
        bar.update(doc + 1 - bar.n)
    bar.close()
    tensors = top.tensors(before)
    n_pos = top.n_pos
    cap = sae.stats.norm_cap if (norm_guard and sae.stats is not None) else None
    info = dict(
        corpus=[str(c) for c in _paths(corpus)],
        documents=len(docs),
        positions=n_pos,
        ctx=ctx,
        norm_cap=cap,
        before=None if whole else before,  # None: the whole context from the window start
    )
    log.info("scanned %d documents, %d positions", len(docs), n_pos)
    return FeatureStats(tensors, info)


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
        ids, mask = pad_batch([seqs[i] for i in chunk], tok.pad_token_id, "right", dev)
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
