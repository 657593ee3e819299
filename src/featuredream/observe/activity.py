"""Observation: what fires on a prompt, what separates two prompt sets, where a feature fires.

Everything is batched: prompts are sorted by length, right-padded (or left-padded, with position ids
derived from the mask so that every real token sees the same positions as alone), and read at the SAE's
site with a forward pass that stops after that layer (:mod:`featuredream.saes.activations`). ``last`` always
means the last *real* token.

Values: ``"code"`` is the SAE's own sparse code (``sae.sae.encode``: after ReLU / TopK / threshold, so
"fires" means non-zero); ``"pre"`` is the encoder pre-activation, the quantity dreams maximize and the
shipped statistics record. Positions whose residual norm exceeds the SAE's norm cap (the "massive
activations" of the first token) never count: their codes are 0 and their pre-activations ``-inf``.

Dataset examples (top examples, minimal contexts, the corpus scan) live in
:mod:`featuredream.observe.top_examples`; tracing (logit effects, attribution, steering) in
:mod:`featuredream.observe.tracing`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..checks import check_choice, check_int
from ..models.padding import pad
from ..models.tl import as_model
from ..objectives.kinds import reduce_positions
from ..saes.activations import (
    VALUES,
    latent_values,
    model_device,
    site_activations,
    valid_positions,
)
from ..saes.loading import BoundSAE

log = logging.getLogger(__name__)

ENCODE_REDUCTIONS = ("last", "max", "mean", "all")


@dataclass
class FeatureRanking:
    """One row of a ranking: ``score`` is the activation (top features) or ``pos_mean - neg_mean``."""

    feature_id: int
    score: float
    pos_mean: float | None = None
    neg_mean: float | None = None
    pos_fire_rate: float | None = None
    neg_fire_rate: float | None = None


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


def tokenize(tok, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt (no special tokens, as everywhere in featuredream); ValueError if empty."""
    enc = tok(list(prompts), add_special_tokens=False)["input_ids"]
    for p, ids in zip(prompts, enc):
        if not ids:
            raise ValueError(f"prompt {p!r} tokenizes to no tokens")
    return enc


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
    model = as_model(model, tok)
    prompts = _check_prompts(prompts)
    check_choice(reduce, ENCODE_REDUCTIONS, "reduction")
    check_choice(values, VALUES, "values")
    check_int("batch_size", batch_size)
    seqs = tokenize(tok, prompts)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    dev = model_device(model)
    off = 0.0 if values == "code" else -torch.inf
    out: list[torch.Tensor | None] = [None] * len(seqs)
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for chunk in tqdm(chunks, desc="encode", unit="batch", disable=len(chunks) < 4, leave=False):
        ids, mask = pad([seqs[i] for i in chunk], tok.pad_token_id, padding_side, device=dev)
        x = site_activations(model, sae.site, ids, mask)
        valid = valid_positions(sae, x, mask, norm_guard)
        v = latent_values(sae, x, values).masked_fill(~valid[..., None], off)  # [b, s, d_sae]
        r = reduce_positions(v, valid, mask, reduce, empty=off) if reduce != "all" else None
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
    return rank_top(codes, check_int("n", n))


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
    check_int("n", n)
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
    """A readable table (with a header)."""
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
