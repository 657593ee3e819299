"""Tracing: what a feature does (logit effects, steering) and which input tokens drive it (attribution).

* :func:`logit_effects` — the feature's unit decoder direction read directly by the unembedding (seed
  004's "unembedded token scores"; later layers are skipped). The final norm is taken as the linear map
  ``v -> gain * v`` (``gain * (v - mean(v))`` for a LayerNorm): its ``1/rms`` factor is one positive
  scalar per position, so it rescales all tokens alike and is left out, as TransformerLens' ``fold_ln``
  does. The gain is read from the norm module itself (``norm(c * 1)``), which covers Llama's ``w`` and
  Gemma's ``1 + w`` without a per-architecture table. Gemma-2's logit soft-capping is monotone and skipped.
* :func:`attribution` — gradient x input per input token, or integrated gradients from a zero embedding
  (sums to ``f(x) - f(0)``, a cheap linearization a first-order estimate of each token's share).
* :func:`steering` — greedy continuations with ``alpha * direction`` added at the SAE's site at every
  position, through the scoped hook :func:`steer`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import nn

from ..checks import check_int
from ..models.loading import embed_scale
from ..models.sites import (
    EDITABLE_KINDS,
    Site,
    head_columns,
    head_dim,
    hook_site,
    output_projection,
    run_sites,
)
from ..models.tl import as_model
from ..objectives.kinds import Objective, resolve_norm_caps
from ..saes.loading import BoundSAE

STEER_SCALES = (0.0, 2.0, 4.0, 8.0)
"""Default steering strengths, in multiples of the feature's dataset maximum (:func:`default_alphas`)."""


def default_alphas(dataset_max: float | None) -> tuple[float, ...]:
    """The direction's natural scale: :data:`STEER_SCALES` x the feature's dataset maximum (x 1 without a
    positive one), rounded to 0.1."""
    scale = dataset_max if dataset_max is not None and dataset_max > 0 else 1.0
    return tuple(round(s * scale, 1) for s in STEER_SCALES)


log = logging.getLogger(__name__)

RESIDUAL_KINDS = ("resid_pre", "resid_post", "mlp_out")
ATTRIBUTION_METHODS = ("grad_x_input", "integrated_gradients")


class TokenScore(NamedTuple):
    token_id: int
    token: str
    value: float


class LogitEffects(NamedTuple):
    """``top`` / ``bottom`` tokens and the full ``values [vocab]`` (CPU float32)."""

    top: list[TokenScore]
    bottom: list[TokenScore]
    values: torch.Tensor


class Attribution(NamedTuple):
    """Per-token ``scores [s]`` to the ``target`` value (at ``position``, or the objective's reduction)."""

    ids: list[int]
    tokens: list[str]
    scores: torch.Tensor
    target: float
    position: int | None
    method: str


class Steered(NamedTuple):
    alpha: float
    text: str
    ids: list[int]


# ---------------------------------------------------------------------------------------------- logits


def final_norm(model: nn.Module) -> nn.Module:
    """The norm applied after the last decoder layer: the last norm-like direct child of the decoder."""
    base = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    norms = [
        m
        for _, m in base.named_children()
        if isinstance(m, nn.LayerNorm) or "norm" in type(m).__name__.lower()
    ]
    if not norms:
        raise ValueError(f"{type(base).__name__} has no final norm module: cannot compute logit effects")
    return norms[-1]


@torch.no_grad()
def norm_as_linear(model: nn.Module, v: torch.Tensor) -> torch.Tensor:
    """The final norm as a linear map applied to ``v [..., d_model]`` (see module doc), float32."""
    norm = final_norm(model)
    v = v.float()
    # a LayerNorm (torch's, or TransformerLens' LayerNorm / LayerNormPre: gain ``w`` or none) centres, then scales
    if isinstance(norm, nn.LayerNorm) or type(norm).__name__ in ("LayerNorm", "LayerNormPre"):
        gain = getattr(norm, "weight", None)
        gain = getattr(norm, "w", None) if gain is None else gain
        gain = torch.ones(v.shape[-1], device=v.device) if gain is None else gain.float()
        return gain * (v - v.mean(-1, keepdim=True))
    # An RMS norm maps a constant vector c*1 to its gain (scale-invariant); a large c makes eps negligible.
    w = next((p for p in norm.parameters()), None)
    probe = torch.full(
        (v.shape[-1],), 1e3, dtype=w.dtype if w is not None else torch.float32, device=v.device
    )
    return norm(probe).float() * v


def residual_direction(model: nn.Module, sae: BoundSAE, feature: int) -> torch.Tensor:
    """The feature's unit decoder direction as written to the residual stream ``[d_model]``.

    Residual and MLP-output sites use it as is; ``attn_z`` maps it through the output projection (that
    head's columns for a per-head SAE). Query/key/value sites do not write to the residual stream.
    """
    model = as_model(model)
    d = sae.decoder_direction(sae.check_latent(feature)).float()
    site = sae.site
    if site.kind in RESIDUAL_KINDS:
        return d
    if site.kind == "attn_z":
        W = output_projection(model, site.layer).float()  # [d_model, H * d_head]
        if site.head is not None:
            dh = head_dim(model)
            W = W[:, site.head * dh : (site.head + 1) * dh]
        return W @ d.to(W.device)
    raise ValueError(
        f"logit effects need a site that writes to the residual stream: {site} is {site.kind!r}, "
        f"valid kinds are {', '.join(RESIDUAL_KINDS + ('attn_z',))}"
    )


@torch.no_grad()
def logit_effects(model: nn.Module, tok, sae: BoundSAE, feature: int, n: int = 10) -> LogitEffects:
    """Top / bottom ``n`` tokens of ``W_U @ norm_as_linear(direction)`` (see module doc)."""
    model = as_model(model, tok)
    check_int("n", n)
    v = norm_as_linear(model, residual_direction(model, sae, feature))
    W_U = model.get_output_embeddings().weight  # [vocab, d_model]
    vals = (W_U.float() @ v.to(W_U.device))[: len(tok)].cpu()
    n = min(n, len(vals))

    def rows(idx: torch.Tensor) -> list[TokenScore]:
        return [TokenScore(int(i), tok.decode([int(i)]), float(vals[i])) for i in idx]

    return LogitEffects(rows(vals.topk(n).indices), rows((-vals).topk(n).indices), vals)


# ---------------------------------------------------------------------------------------------- attribution


def attribution(
    model: nn.Module,
    tok,
    objective: Objective,
    prompt: str,
    position: int | None = None,
    *,
    method: str = "grad_x_input",
    steps: int = 32,
) -> Attribution:
    """Each input token's contribution to the objective on ``prompt``.

    ``position``: the token whose per-token value is explained (negative counts from the end); None uses
    the objective's own reduction (for ``last``: the last token). ``grad_x_input``: ``grad . embedding``
    per token; ``integrated_gradients``: the path integral from a zero embedding in ``steps`` midpoints.
    """
    model = as_model(model, tok)
    resolve_norm_caps(model, tok, objective)
    if method not in ATTRIBUTION_METHODS:
        raise ValueError(f"unknown attribution method {method!r}: valid are {', '.join(ATTRIBUTION_METHODS)}")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt {prompt!r} is empty: valid is a non-empty string")
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    s = len(ids)
    if position is not None:
        if not -s <= position < s:
            raise ValueError(
                f"position {position} out of range for a {s}-token prompt: valid are {-s}..{s - 1}"
            )
        position %= s
    W = model.get_input_embeddings().weight
    x = (W[torch.tensor(ids, device=W.device)] * embed_scale(model)).detach()  # [s, d_model]

    def f(e: torch.Tensor) -> torch.Tensor:  # [n, s, d_model] -> [n]
        mask = torch.ones(e.shape[:2], dtype=torch.bool, device=e.device)
        acts, _ = run_sites(model, objective.sites, inputs_embeds=e)
        out = objective(acts, mask)
        return out.scores if position is None else out.token_acts[:, position]

    with torch.enable_grad():
        if method == "grad_x_input":
            e = x[None].clone().requires_grad_(True)
            val = f(e)
            target = float(val[0].detach())
            if torch.isfinite(val).all():
                val.sum().backward()
            grad = e.grad[0] if e.grad is not None else torch.zeros_like(x)
        else:
            check_int("steps", steps)
            a = (torch.arange(steps, device=x.device, dtype=x.dtype) + 0.5) / steps
            e = (a[:, None, None] * x[None]).requires_grad_(True)
            val = f(e)
            target = float(f(x[None]).detach()[0])
            if torch.isfinite(val).all():
                val.sum().backward()
            grad = e.grad.mean(0) if e.grad is not None else torch.zeros_like(x)
    if not torch.isfinite(torch.tensor(target)):
        raise ValueError(
            f"the objective is {target} on {prompt!r} (the scored token is above the norm cap): pick another position"
        )
    scores = (grad.float() * x.float()).sum(-1).detach().cpu()
    return Attribution(ids, [tok.decode([i]) for i in ids], scores, target, position, method)


def format_attribution(a: Attribution) -> str:
    """One line per token: index, token, score, and a bar."""
    top = float(a.scores.abs().max()) or 1.0
    lines = [f"target {a.target:+.4f} ({a.method}; sum of scores {float(a.scores.sum()):+.4f})"]
    for i, (t, v) in enumerate(zip(a.tokens, a.scores.tolist())):
        bar = ("+" if v >= 0 else "-") * round(20 * abs(v) / top)
        mark = " <" if i == a.position else ""
        lines.append(f"{i:>4}  {t!r:<18} {v:>+9.4f}  {bar}{mark}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- steering


@contextmanager
def steer(model: nn.Module, site: Site, vector: torch.Tensor) -> Iterator[None]:
    """Add ``vector`` (``[width]`` of ``site``, e.g. ``[d_model]``) to ``site`` at every position of every
    forward pass inside the block, through the hook-point resolver :func:`featuredream.models.sites.hook_site`
    (for a head site, to that head's columns); the hooks are removed in ``finally``."""
    model = as_model(model)
    site.validate(model)
    if site.kind not in EDITABLE_KINDS:
        raise ValueError(
            f"steering at {site} ({site.kind!r}) is not supported: valid kinds are resid_pre, "
            "resid_post, mlp_out, attn_z, attn_q, attn_k, attn_v"
        )
    vec = vector.detach().to(next(model.parameters()).device)
    cols = head_columns(model, site)

    def add(x: torch.Tensor) -> torch.Tensor:
        if cols is None:
            return x + vec.to(x.dtype)
        x = x.clone()
        x[..., cols] += vec.to(x.dtype)
        return x

    handles = []
    try:
        handles += hook_site(model, site, add)
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def greedy(model: nn.Module, tok, ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy continuation ``[n_new]`` of ``ids [1, s]`` with ``model.generate`` (stops at EOS)."""
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=tok.pad_token_id,
        temperature=None,
        top_p=None,
        top_k=None,
    )
    return out[0, ids.shape[1] :]


def steering(
    model: nn.Module,
    tok,
    sae: BoundSAE,
    feature: int,
    prompt: str,
    alphas: Sequence[float] | None = None,
    max_new_tokens: int = 20,
) -> list[Steered]:
    """Greedy continuations of ``prompt`` with ``alpha`` x the feature's unit decoder direction added at
    the SAE's site (one generation per alpha; ``alpha = 0`` reproduces plain generation exactly).
    ``alphas`` default: :func:`default_alphas` of the feature's dataset maximum."""
    model = as_model(model, tok)
    f = sae.check_latent(feature)
    if alphas is None:
        alphas = default_alphas(sae.stats.value("max_activation", f) if sae.stats is not None else None)
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"steering prompt {prompt!r} is empty: valid is a non-empty string")
    if not alphas:
        raise ValueError("alphas is empty: valid is a non-empty list of numbers, e.g. 0,4,8")
    check_int("max_new_tokens", max_new_tokens)
    dev = next(model.parameters()).device
    ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]], device=dev)
    direction = sae.decoder_direction(f).detach()
    out = []
    for alpha in alphas:
        with steer(model, sae.site, float(alpha) * direction):
            new = greedy(model, tok, ids, max_new_tokens).tolist()
        out.append(Steered(float(alpha), tok.decode(new, skip_special_tokens=True), new))
    return out
