"""Dataset examples over a user's own text files: top-k windows of **every** latent in one streaming pass.

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
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..lm.corpus import read_text_files
from .inspect import _check_int, _device, _valid, _values, pad_batch, site_activations
from ..lm.saes import BoundSAE, FeatureStats

log = logging.getLogger(__name__)


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
    for name, v, lo in (("ctx", ctx, 1), ("k", k, 1), ("batch_size", batch_size, 1), ("after", after, 0)):
        _check_int(name, v, lo)
    if before is not None:
        _check_int("before", before, 0)
    whole = before is None
    before = ctx - 1 if whole else before
    docs = _read_corpus(corpus)
    dev, d, w = _device(model), sae.d_sae, before + 1 + after
    best_v = torch.full((k, d), -torch.inf, device=dev)
    best_tok = torch.full((k, d, w), -1, dtype=torch.long, device=dev)
    best_act = torch.zeros((k, d, w), device=dev)
    fires, n_pos = torch.zeros(d, device=dev), 0
    offs = torch.arange(-before, after + 1, device=dev)
    lat = torch.arange(d, device=dev)[None, :, None].expand(k, d, w)
    bar = tqdm(total=len(docs), desc="top examples", unit="doc", disable=not progress)
    for seqs, doc in _windows(tok, docs, ctx, batch_size):
        ids, mask = pad_batch(seqs, tok.pad_token_id, "right", dev)
        x = site_activations(model, sae.site, ids, mask)
        valid = _valid(sae, x, mask, norm_guard)
        n_pos += int(valid.sum())
        fires += ((_values(sae, x, "code") > 0) & valid[..., None]).sum((0, 1)).float()
        pre = _values(sae, x, "pre").masked_fill(~valid[..., None], -torch.inf)  # [b, s, d]
        m, p = pre.max(dim=1)  # [b, d]
        top_v, idx = torch.cat([best_v, m]).topk(k, dim=0)  # [k, d]
        new = idx >= k
        old = idx.clamp(max=k - 1)[..., None].expand(k, d, w)
        bi = (idx - k).clamp_min(0)
        grid = p.gather(0, bi)[..., None] + offs  # [k, d, w]
        inside = (grid >= 0) & (grid < mask.sum(1)[bi][..., None])
        b3, g3 = bi[..., None].expand(k, d, w), grid.clamp(0, ids.shape[1] - 1)
        new_tok = torch.where(inside, ids[b3, g3], -1)
        new_act = torch.where(inside, pre[b3, g3, lat].nan_to_num(0.0, neginf=0.0), 0.0)
        best_tok = torch.where(new[..., None], new_tok, best_tok.gather(0, old))
        best_act = torch.where(new[..., None], new_act, best_act.gather(0, old))
        best_v = top_v
        bar.update(doc + 1 - bar.n)
    bar.close()
    tok_l, act_l, pos = _left_align(best_tok.cpu(), best_act.cpu(), before)
    found = torch.isfinite(best_v.cpu())
    tensors = {
        "max_activation": best_v[0].cpu(),
        "fire_rate": fires.cpu() / max(n_pos, 1),
        "top_tokens": torch.where(found[..., None], tok_l, -1).permute(1, 0, 2).int().contiguous(),
        "top_acts": act_l.permute(1, 0, 2).contiguous(),
        "top_pos": torch.where(found, pos, -1).T.contiguous(),
        "top_values": best_v.cpu().T.contiguous(),
    }
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
