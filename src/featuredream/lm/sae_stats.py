"""Dataset statistics of a trained SAE, made verifiable.

Per latent: ``max_activation`` (encoder pre-activation), ``max_projection``, ``fire_rate``, and the top
``K`` examples (one per corpus window). Each example holds its **whole context**: the window's tokens from
its first token to the activating token (up to the SAE's context), then up to ``after`` tokens for display.
Scoring ``top_tokens[lat, j, :top_pos[lat, j] + 1]`` alone reproduces ``top_values[lat, j]``: the model is
causal and nothing before the window start was ever seen (``verify_examples`` checks it; the test suite
checks every latent of the shipped SAEs).

The statistics also carry the natural-text **XE table**: quantiles (0..100) of the mean next-token
cross-entropy of held-out corpus windows truncated to each length, ``xe_lengths [m]`` and
``xe_quantiles [m, 101]``. ``--xe-max p90`` reads it at each candidate's own length.

``windows_digest`` fingerprints the exact token windows statistics (or an activation cache) came from, so
a cache captured on another corpus (the stdlib's pydoc text differs between Python installations) is
refused instead of silently pairing one window's tokens with another's activations.
"""

from __future__ import annotations

import hashlib
import logging
import math

import torch
from torch import nn
from tqdm.auto import tqdm

from .activations import latent_values, pad_batch, site_activations
from .xe import token_xe

log = logging.getLogger(__name__)


def windows_digest(windows: torch.Tensor) -> str:
    """SHA-256 (hex, first 16 chars) of ``windows [n, ctx]`` as int32 bytes, shape included."""
    h = hashlib.sha256(str(tuple(windows.shape)).encode())
    h.update(windows.to(torch.int32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class Encoder:
    """The encoder pre-activation ``(x - b_dec) @ W_enc + b_enc`` in float32 (sae-lens' TopK layout)."""

    def __init__(self, W_enc: torch.Tensor, b_enc: torch.Tensor, b_dec: torch.Tensor, W_dec: torch.Tensor):
        self.W_enc, self.b_enc = W_enc.detach().float(), b_enc.detach().float()
        self.b_dec, self.W_dec = b_dec.detach().float(), W_dec.detach().float()

    @classmethod
    def of(cls, sae: nn.Module) -> Encoder:
        return cls(sae.W_enc, sae.b_enc, sae.b_dec, sae.W_dec)

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """``[n, d_in] -> [n, d_sae]``."""
        return (x - self.b_dec) @ self.W_enc + self.b_enc


def _top_candidates(enc: Encoder, flat: torch.Tensor, rows: torch.Tensor, k: int, cand: int):
    """Best ``cand`` rows of ``flat`` per latent (values, row indices ``[cand, d_sae]``), fire counts and
    max decoder projections, in chunks."""
    d_sae = enc.W_enc.shape[1]
    best_v = torch.full((cand, d_sae), -math.inf)
    best_i = torch.zeros((cand, d_sae), dtype=torch.long)
    max_proj = torch.full((d_sae,), -math.inf)
    fires = torch.zeros(d_sae)
    W_dec_unit = enc.W_dec / enc.W_dec.norm(dim=1, keepdim=True)
    for i in tqdm(range(0, len(rows), 8192), desc="feature statistics", unit="chunk"):
        r = rows[i : i + 8192]
        x = flat[r]
        pre = enc.pre(x)
        _, idx = pre.topk(k, dim=-1)
        fires += torch.zeros_like(pre).scatter_(-1, idx, (pre.gather(-1, idx) > 0).float()).sum(0)
        max_proj = torch.maximum(max_proj, (x @ W_dec_unit.T).max(0).values)
        v, j = pre.topk(min(cand, len(r)), dim=0)
        allv, alli = torch.cat([best_v, v]), torch.cat([best_i, r[j]])
        top = allv.topk(cand, dim=0).indices
        best_v, best_i = allv.gather(0, top), alli.gather(0, top)
    return best_v, best_i, fires, max_proj


@torch.no_grad()
def feature_statistics(
    enc: Encoder,
    acts: torch.Tensor,
    keep: torch.Tensor,
    windows: torch.Tensor,
    *,
    k: int,
    top_k_examples: int = 8,
    after: int = 8,
) -> dict[str, torch.Tensor]:
    """Statistics over ``acts [n, ctx, d]`` (site activations of ``windows [n, ctx]``; ``keep [n, ctx]``
    is False at positions over the norm cap, which never count). ``k``: the SAE's TopK (for fire rates).

    Returns ``max_activation / max_projection / fire_rate [d_sae]``, ``top_tokens [d_sae, K, ctx+after]``
    (int32, -1 after the end), ``top_acts`` (float16, same shape; 0 at capped positions), ``top_pos
    [d_sae, K]`` (index of the activating token = context length - 1; -1: no example), ``top_values [d_sae,
    K]`` (float32 pre-activation in context).
    """
    if acts.shape[:2] != windows.shape or keep.shape != windows.shape:
        raise ValueError(
            f"activations {tuple(acts.shape)} do not match windows {tuple(windows.shape)}: they must come "
            "from the same windows (see windows_digest)"
        )
    n, ctx, d = acts.shape
    d_sae, K = enc.W_enc.shape[1], top_k_examples
    flat, rows = acts.reshape(-1, d), keep.reshape(-1).nonzero().squeeze(1)
    best_v, best_i, fires, max_proj = _top_candidates(enc, flat, rows, k, 4 * K)
    pairs = []  # (latent, slot, window, position, value)
    for lat in range(d_sae):
        seen: set[int] = set()
        for v, flat_i in zip(best_v[:, lat].tolist(), best_i[:, lat].tolist()):
            win, pos = divmod(flat_i, ctx)
            if math.isfinite(v) and win not in seen:
                seen.add(win)
                pairs.append((lat, len(seen) - 1, win, pos, v))
                if len(seen) == K:
                    break
    w = ctx + after
    top_tokens = torch.full((d_sae, K, w), -1, dtype=torch.int32)
    top_acts = torch.zeros((d_sae, K, w), dtype=torch.float16)
    top_pos = torch.full((d_sae, K), -1, dtype=torch.int16)
    top_values = torch.full((d_sae, K), -math.inf)
    for c in range(0, len(pairs), 1024):
        chunk = pairs[c : c + 1024]
        lat, slot, win, pos = (torch.tensor([p[i] for p in chunk]) for i in range(4))
        x = acts[win] - enc.b_dec  # [c, ctx, d]
        col = torch.einsum("csd,dc->cs", x, enc.W_enc[:, lat]) + enc.b_enc[lat][:, None]
        col = col.masked_fill(~keep[win], 0.0)
        span = torch.arange(ctx)[None] <= (pos[:, None] + after)  # context + up to `after` tokens
        top_tokens[lat, slot, :ctx] = torch.where(span, windows[win], -1).int()
        top_acts[lat, slot, :ctx] = torch.where(span, col, 0.0).half()
        top_pos[lat, slot] = pos.short()
        top_values[lat, slot] = torch.tensor([p[4] for p in chunk])
    return {
        "max_activation": best_v[0].clone(),
        "max_projection": max_proj,
        "fire_rate": fires / max(len(rows), 1),
        "top_tokens": top_tokens,
        "top_acts": top_acts,
        "top_pos": top_pos,
        "top_values": top_values,
    }


@torch.no_grad()
def prefix_xe(
    model: nn.Module, windows: torch.Tensor, batch: int = 32, desc: str = "XE table"
) -> torch.Tensor:
    """``[n, L-1]`` float32: column ``j`` is the mean next-token XE of each window's first ``j + 2`` tokens
    (the model is causal, so that is the XE of the ``j + 2``-token text alone) for ``windows [n, L]``."""
    dev = next(model.parameters()).device
    prefix = []
    for i in tqdm(range(0, len(windows), batch), desc=desc, unit="batch", disable=None):  # None: a TTY only
        ids = windows[i : i + batch].to(dev)
        mask = torch.ones_like(ids, dtype=torch.bool)
        xe, _ = token_xe(model(input_ids=ids, use_cache=False).logits, ids, mask)
        prefix.append((xe.cumsum(1) / torch.arange(1, ids.shape[1], device=dev)).float().cpu())
    return torch.cat(prefix)


@torch.no_grad()
def xe_quantile_table(model: nn.Module, windows: torch.Tensor, batch: int = 32) -> dict[str, torch.Tensor]:
    """Natural-text XE by length from ``windows [n, L]``: :func:`prefix_xe` for ``m`` = 2..L tokens, then
    its percentiles 0..100 over the windows.

    Returns ``xe_lengths [L-1]`` (int32: 2..L) and ``xe_quantiles [L-1, 101]`` (float32).
    """
    table = prefix_xe(model, windows, batch)  # [n, L-1]
    q = torch.quantile(table.double(), torch.linspace(0, 1, 101, dtype=torch.double), dim=0)  # [101, L-1]
    return {
        "xe_lengths": torch.arange(2, windows.shape[1] + 1, dtype=torch.int32),
        "xe_quantiles": q.T.float().contiguous(),
    }


@torch.no_grad()
def verify_examples(model: nn.Module, sae, pairs: list[tuple[int, int]], batch: int = 32) -> torch.Tensor:
    """Score each stored example ``(latent, slot)`` **alone** from its tokens (context up to the
    activating token) with a plain forward pass; returns the relative errors ``[len(pairs)]`` against the
    recorded ``top_values``. Examples of one window share one pass (the longest context among them)."""
    st, dev = sae.stats, next(model.parameters()).device
    by_window: dict[tuple[int, ...], list[int]] = {}
    ctxs = []
    for lat, slot in pairs:
        pos = int(st.top_pos[lat, slot])
        ctxs.append(tuple(st.top_tokens[lat, slot, : pos + 1].tolist()))
    # A context that is a prefix of another (same window, earlier token) is read from the longer one: in
    # lexicographic order the contexts extending ``c`` come right after ``c``.
    uniq = sorted(set(ctxs))
    owner: dict[tuple[int, ...], tuple[int, ...]] = {}
    for j in range(len(uniq) - 1, -1, -1):
        c, nxt = uniq[j], uniq[j + 1] if j + 1 < len(uniq) else None
        owner[c] = owner[nxt] if nxt is not None and nxt[: len(c)] == c else c
    for i, c in enumerate(ctxs):
        by_window.setdefault(owner[c], []).append(i)
    err = torch.full((len(pairs),), math.inf)
    keys = list(by_window)
    for b in range(0, len(keys), batch):
        group = keys[b : b + batch]
        ids, mask = pad_batch([list(g) for g in group], 0, "right", dev)
        x = site_activations(model, sae.site, ids, mask)
        pre = latent_values(sae, x, "pre").cpu()  # [b, s, d_sae]
        for row, key in enumerate(group):
            for i in by_window[key]:
                lat, slot = pairs[i]
                pos = int(st.top_pos[lat, slot])
                want = float(st.top_values[lat, slot])
                err[i] = abs(float(pre[row, pos, lat]) - want) / max(abs(want), 1e-6)
    return err
