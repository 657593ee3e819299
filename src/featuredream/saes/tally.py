"""The tally of every latent of an SAE over a stream of windows: the one statistics engine.

Per latent: the maximum encoder pre-activation, the maximum decoder projection, the fire count, and the
running top ``k`` examples (one per window, ranked by encoder pre-activation, ties to the earlier window),
each with its whole context (the window from its first token to the activating token, then ``after``
tokens for display) and per-token activations. Positions over the norm cap never count. Memory is bounded
by the top-k, not the corpus.

Three callers feed it: ``featuredream stats`` (:func:`~.stats.compute_statistics`: the model's activations
of a corpus' windows, checkpointed), ``train-sae`` (:func:`statistics_from_activations`: the activations the
training captured) and ``inspect examples --corpus`` (:func:`corpus_statistics`: a user's text files cut into
windows). All three give the layout of the shipped statistics (:func:`to_feature_tensors`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from ..models.padding import pad
from .activations import latent_values, model_device, site_activations
from .loading import BoundSAE, FeatureStats

log = logging.getLogger(__name__)

NORM_CAP_MULT = 3.0
"""Without a recorded norm cap, positions whose norm exceeds this x the median are dropped (as in
``train_sae``): the first token's "massive activation" would otherwise win every latent's maximum."""


@dataclass
class TopState:
    """The running statistics: ``values [k, d]`` (-inf: none yet), ``tokens [k, d, w]`` (int32, -1 = none),
    ``acts [k, d, w]`` (float16), ``pos [k, d]`` (activating index), ``fires / max_proj [d]``, counters."""

    values: torch.Tensor
    tokens: torch.Tensor
    acts: torch.Tensor
    pos: torch.Tensor
    fires: torch.Tensor
    max_proj: torch.Tensor
    positions: int = 0
    done: int = 0
    """Windows consumed (the next chunk starts here)."""

    @classmethod
    def empty(cls, k: int, d: int, w: int, dev) -> TopState:
        return cls(
            torch.full((k, d), -math.inf, device=dev),
            torch.full((k, d, w), -1, dtype=torch.int32, device=dev),
            torch.zeros((k, d, w), dtype=torch.float16, device=dev),
            torch.full((k, d), -1, dtype=torch.long, device=dev),
            torch.zeros(d, dtype=torch.float64, device=dev),
            torch.full((d,), -math.inf, device=dev),
        )

    TENSORS = ("values", "tokens", "acts", "pos", "fires", "max_proj")

    def save(self, path: Path, meta: dict) -> None:
        tensors = {n: getattr(self, n).cpu().contiguous() for n in self.TENSORS}
        meta = {**meta, "positions": str(self.positions), "done": str(self.done)}
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path, meta: dict, dev) -> TopState:
        with safe_open(str(path), "pt") as f:
            got = f.metadata() or {}
            diff = [k for k in meta if got.get(k) != meta[k]]
            if diff:
                raise ValueError(
                    f"cannot resume from {str(path)!r}: it was made with another {', '.join(diff)} "
                    f"({got.get(diff[0])!r} vs {meta[diff[0]]!r}); delete it or run without --resume"
                )
            t = {n: f.get_tensor(n).to(dev) for n in cls.TENSORS}
        return cls(**t, positions=int(got["positions"]), done=int(got["done"]))


def update_tally(st: TopState, sae: BoundSAE, x, valid, ids, after: int, w_dec_unit, real=None) -> None:
    """Merge one batch (``x [b, s, d_in]``, ``valid [b, s]``, ``ids [b, s]``; ``real [b, s]``: the real
    tokens of right-padded windows, None: all) into the running top-k:
    a latent's value in a window is its maximum over the window's valid positions; ties go to the earlier
    window, so the result does not depend on the batch size."""
    k, d, w = st.tokens.shape
    s = ids.shape[1]
    st.positions += int(valid.sum())
    st.fires += ((latent_values(sae, x, "code") > 0) & valid[..., None]).sum((0, 1)).double()
    xf = x.float()
    proj = (xf @ w_dec_unit.T).masked_fill(~valid[..., None], -math.inf)
    st.max_proj = torch.maximum(st.max_proj, proj.amax((0, 1)))
    pre = latent_values(sae, xf, "pre")  # [b, s, d]
    m, p = pre.masked_fill(~valid[..., None], -math.inf).max(dim=1)  # [b, d]
    # a stable sort: among equal values the earlier window stays first (kept entries come before the batch)
    vals, idx = torch.cat([st.values, m]).sort(dim=0, descending=True, stable=True)
    st.values, idx = vals[:k], idx[:k]  # [k, d]; idx >= k: a row of this batch
    old = idx.clamp(max=k - 1)
    st.tokens = st.tokens.gather(0, old[..., None].expand(k, d, w))
    st.acts = st.acts.gather(0, old[..., None].expand(k, d, w))
    st.pos = st.pos.gather(0, old)
    kk, dd = (idx >= k).nonzero(as_tuple=True)
    if len(kk) == 0:
        return
    r = idx[kk, dd] - k
    pp = p[r, dd]
    span = torch.arange(s, device=ids.device) <= pp[:, None] + after  # [n, s]
    if real is not None:  # a padded window's padding is no token of the example
        span &= real[r]
    st.tokens[kk, dd] = -1
    st.acts[kk, dd] = 0
    st.tokens[kk, dd, :s] = ids[r].int().masked_fill(~span, -1)
    st.acts[kk, dd, :s] = pre[r, :, dd].masked_fill(~(span & valid[r]), 0.0).half()
    st.pos[kk, dd] = pp


def default_batch(dev: torch.device, ctx: int, d_sae: int) -> int:
    """Windows per pass: 32 on CPU; on CUDA as many as fit a quarter of the free memory (the ``[b, ctx,
    d_sae]`` pre-activations and their projections dominate), at most 512."""
    if dev.type != "cuda":
        return 32
    free, _ = torch.cuda.mem_get_info(dev)
    per_window = ctx * d_sae * 4 * 4
    return int(max(1, min(512, free // 4 // per_window)))


def norm_cap_of(model: nn.Module, sae: BoundSAE, windows: torch.Tensor, batch: int) -> float:
    """The SAE's recorded norm cap, else ``NORM_CAP_MULT`` x the median activation norm of the first
    windows (at most 64)."""
    if sae.stats is not None and sae.stats.norm_cap is not None:
        return float(sae.stats.norm_cap)
    dev = model_device(model)
    ids = windows[: min(64, len(windows))].to(dev)
    norms = []
    for part in ids.split(batch):
        x = site_activations(model, sae.site, part, torch.ones_like(part, dtype=torch.bool))
        norms.append(x.float().norm(dim=-1).flatten().cpu())
    return float(NORM_CAP_MULT * torch.cat(norms).median())


def to_feature_tensors(st: TopState, ctx: int) -> dict[str, torch.Tensor]:
    """The shipped layout: ``[d, k, ...]`` examples, float32 maxima, fire rate over valid positions."""
    found = torch.isfinite(st.values)  # [k, d]
    tokens = st.tokens.masked_fill(~found[..., None], -1)
    return {
        "max_activation": st.values[0].float().cpu(),
        "max_projection": st.max_proj.float().cpu(),
        "fire_rate": (st.fires / max(st.positions, 1)).float().cpu(),
        "top_tokens": tokens.permute(1, 0, 2).contiguous().cpu(),
        "top_acts": st.acts.permute(1, 0, 2).contiguous().cpu(),
        "top_pos": torch.where(found, st.pos, -1).T.to(torch.int16).contiguous().cpu(),
        "top_values": st.values.T.float().contiguous().cpu(),
    }


def unit_decoder(sae: BoundSAE) -> torch.Tensor:
    """``[d_sae, d_in]`` float32: each latent's decoder direction, unit length (for the max projection)."""
    W = sae.sae.W_dec.detach().float()
    return W / W.norm(dim=1, keepdim=True)


@torch.no_grad()
def statistics_from_activations(
    sae: BoundSAE,
    acts: torch.Tensor,
    valid: torch.Tensor,
    windows: torch.Tensor,
    *,
    k: int = 8,
    after: int = 8,
    batch: int = 64,
) -> dict[str, torch.Tensor]:
    """The tally of activations already captured (``acts [n, s, d_in]`` of ``windows [n, s]``, ``valid [n,
    s]``: positions that count): what ``train_sae`` writes for the SAE it trained."""
    if acts.shape[:2] != windows.shape or valid.shape != windows.shape:
        raise ValueError(
            f"activations {tuple(acts.shape)} do not match windows {tuple(windows.shape)}: they must come "
            "from the same windows (see windows_digest)"
        )
    dev = sae.sae.W_enc.device
    st = TopState.empty(k, sae.d_sae, windows.shape[1] + after, dev)
    w_dec_unit = unit_decoder(sae)
    for i in range(0, len(windows), batch):
        x, v, ids = (t[i : i + batch].to(dev) for t in (acts, valid, windows))
        update_tally(st, sae, x.float(), v, ids, after, w_dec_unit)
    return to_feature_tensors(st, windows.shape[1])


def windows_of(tok, docs: list[str], ctx: int) -> list[list[int]]:
    """Each document cut into non-overlapping ``ctx``-token windows (its tail a shorter one)."""
    out = []
    for text in docs:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        out += [ids[i : i + ctx] for i in range(0, len(ids), ctx)]
    return out


@torch.no_grad()
def corpus_statistics(
    model: nn.Module,
    tok,
    sae: BoundSAE,
    docs: list[str],
    *,
    ctx: int = 64,
    k: int = 8,
    after: int = 8,
    batch: int = 32,
    norm_guard: bool = True,
    progress: bool = True,
) -> FeatureStats:
    """The tally over ``docs`` cut into non-overlapping ``ctx``-token windows, run right-padded to the SAE's
    site: every example from its window's first token, so its context scored alone reproduces its value.
    The norm cap is the SAE's recorded one (none without statistics or with ``norm_guard=False``)."""
    dev = model_device(model)
    cap = sae.stats.norm_cap if (norm_guard and sae.stats is not None) else None
    wins = windows_of(tok, docs, ctx)
    st = TopState.empty(k, sae.d_sae, ctx + after, dev)
    w_dec_unit = unit_decoder(sae).to(dev)
    for i in tqdm(range(0, len(wins), batch), desc="top examples", unit="batch", disable=not progress):
        ids, mask = pad(wins[i : i + batch], tok.pad_token_id or 0, device=dev)
        x = site_activations(model, sae.site, ids, mask)
        valid = mask if cap is None else mask & (x.float().norm(dim=-1) <= cap)
        update_tally(st, sae, x.float(), valid, ids, after, w_dec_unit, real=mask)
    info = dict(documents=len(docs), windows=len(wins), positions=st.positions, ctx=ctx, norm_cap=cap)
    log.info("tally of %d windows, %d positions", len(wins), st.positions)
    return FeatureStats(to_feature_tensors(st, ctx), info)
