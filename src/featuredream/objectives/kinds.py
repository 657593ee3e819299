"""Objectives: captured activations -> a score per candidate (higher is better).

An :class:`Objective` declares the sites it reads (so the evaluator can stop the forward pass after the
last of them) and maps ``{Site: activation}`` plus the attention mask to an :class:`ObjectiveOutput`.
Per-token values are reduced over *real* positions only: ``last`` (the last real token, whatever the
padding side), ``max`` or ``mean``.

Norm guard, for every objective: positions with "massive activations" (norm far above the median;
SmolLM2's first token and ``\\n\\n``) give huge, meaningless values on any direction. Positions whose
activation norm is above the objective's ``norm_cap`` are not valid: ``max``/``mean`` skip them and
``last`` scores ``-inf`` when the last token is one of them. An SAE objective uses the cap its statistics
record; every other objective (and an SAE without statistics) uses its site's cap (:data:`SITE_CAP`, 3x the
median norm there, measured once per model and site by :func:`resolve_norm_caps`, which every entry point
calls). ``norm_guard=False`` turns the guard off, a number sets the cap.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

import torch

from ..models.sites import Site
from ..models.tl import as_model
from ..saes.loading import BoundSAE

log = logging.getLogger(__name__)

REDUCTIONS = ("last", "max", "mean")


class ObjectiveOutput(NamedTuple):
    """``scores [b]``, ``token_acts [b, s]`` (0 at padding), ``valid [b, s]`` (real and under the norm cap)."""

    scores: torch.Tensor
    token_acts: torch.Tensor
    valid: torch.Tensor


@runtime_checkable
class Objective(Protocol):
    """What the evaluator needs from an objective."""

    name: str
    sites: tuple[Site, ...]
    reduce: str

    def __call__(self, acts: dict[Site, torch.Tensor], mask: torch.Tensor) -> ObjectiveOutput: ...


def check_reduce(reduce: str) -> str:
    if reduce not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduce!r}: valid are {', '.join(REDUCTIONS)}")
    return reduce


def last_real_index(mask: torch.Tensor) -> torch.Tensor:
    """Index ``[b]`` of the last real token of each row of ``mask [b, s]`` (left or right padding)."""
    pos = torch.arange(mask.shape[1], device=mask.device)
    return (mask.long() * (pos + 1)).argmax(dim=1)


def reduce_positions(
    token_acts: torch.Tensor, valid: torch.Tensor, mask: torch.Tensor, how: str, empty: float = -torch.inf
) -> torch.Tensor:
    """Reduce ``token_acts [b, s, *rest]`` over the valid positions (``valid [b, s]``) of each row to
    ``[b, *rest]`` (see module doc); a row whose reduced positions are not valid gets ``empty``."""
    v = valid.view(*valid.shape, *([1] * (token_acts.ndim - 2)))
    fill = torch.tensor(empty, dtype=token_acts.dtype, device=token_acts.device)
    if how == "last":
        rows = torch.arange(len(mask), device=mask.device)
        idx = last_real_index(mask)
        return torch.where(v[rows, idx], token_acts[rows, idx], fill)
    if how == "max":
        top = token_acts.masked_fill(~v, -torch.inf).max(dim=1).values
        return torch.where(v.any(dim=1), top, fill)
    n = v.sum(dim=1)
    total = token_acts.masked_fill(~v, 0.0).sum(dim=1)
    return torch.where(n > 0, total / n.clamp_min(1), fill)


SITE_CAP = "site"
"""An objective's ``norm_cap`` before its site's cap is measured (:func:`resolve_norm_caps`). Called before
that (an :class:`~.evaluate.Evaluator` used directly), the objective guards nothing and says so once."""
_UNRESOLVED_WARNED: list[bool] = []


def guarded(x: torch.Tensor, mask: torch.Tensor, norm_cap: float | str | None) -> torch.Tensor:
    """``valid [b, s]``: the real positions (``mask``) whose activation ``x [b, s, ...]`` has a norm within
    ``norm_cap`` (the norm guard: a first token's "massive activation" never counts; None: no cap)."""
    valid = mask.bool()
    if norm_cap is None:
        return valid
    if norm_cap == SITE_CAP:
        if not _UNRESOLVED_WARNED:
            _UNRESOLVED_WARNED.append(True)
            log.warning(
                "an objective's norm cap (its site's) is not measured, so no position is guarded: call "
                "featuredream.objectives.kinds.resolve_norm_caps(model, tokenizer, objective) first (dream, "
                "reference_evaluate, the scans and attribution do), or pass norm_guard=False or a number"
            )
        return valid
    return valid & (x.float().flatten(2).norm(dim=-1) <= norm_cap)


def guard_cap(norm_guard: bool | float | None, recorded: float | None = None) -> float | str | None:
    """The ``norm_cap`` a ``norm_guard`` option asks for: True -> ``recorded`` (an SAE's cap) or, without
    one, the site's (:data:`SITE_CAP`); a number -> that cap; False / None -> no guard."""
    if norm_guard is False or norm_guard is None:
        return None
    if norm_guard is True:
        return recorded if recorded is not None else SITE_CAP
    if isinstance(norm_guard, str) or not float(norm_guard) > 0:
        raise ValueError(f"norm cap {norm_guard!r} is invalid: valid is True, False or a number > 0")
    return float(norm_guard)


def _leaves(objective) -> list:
    """The objectives that hold caps inside ``objective`` (a group's members, a weighted sum's terms)."""
    if hasattr(objective, "singles"):
        return [o for single in objective.singles for o in _leaves(single)]
    if isinstance(objective, WeightedSum):
        return [o for _, term in objective.terms for o in _leaves(term)]
    return [objective]


def resolve_norm_caps(model, tokenizer, objective) -> None:
    """Measure the site's norm cap (:func:`featuredream.text.activation_store.site_norm_cap`) of every part of
    ``objective`` whose guard asks for it (in place; once per model and site, then cached)."""
    from ..text.activation_store import site_norm_cap

    for obj in _leaves(objective):
        if getattr(obj, "norm_cap", None) == SITE_CAP:
            obj.norm_cap = site_norm_cap(model, tokenizer, obj.site)
        caps = getattr(obj, "norm_caps", None)
        for site, cap in (caps or {}).items():
            if cap == SITE_CAP:
                caps[site] = site_norm_cap(model, tokenizer, site)


class _SiteObjective:
    """Shared plumbing: one site, a per-token function, an optional norm cap, a reduction."""

    name: str
    site: Site
    reduce: str
    norm_cap: float | str | None

    @property
    def sites(self) -> tuple[Site, ...]:
        return (self.site,)

    def token_values(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, acts: dict[Site, torch.Tensor], mask: torch.Tensor) -> ObjectiveOutput:
        x = acts[self.site]
        mask = mask.bool()
        valid = guarded(x, mask, self.norm_cap)
        vals = self.token_values(x).float().masked_fill(~mask, 0.0)
        return ObjectiveOutput(reduce_positions(vals, valid, mask, self.reduce), vals, valid)


def _norm_cap(sae: BoundSAE, norm_guard: bool | float) -> float | str | None:
    return guard_cap(norm_guard, sae.stats.norm_cap if sae.stats is not None else None)


class SAEEncoder(_SiteObjective):
    """A latent's encoder pre-activation (before ReLU / TopK / threshold), the quantity feature dreaming maximizes.

    ``norm_guard``: True uses the cap recorded with the SAE (without one: the site's), a number sets it,
    False disables.
    """

    def __init__(self, sae: BoundSAE, latent: int, reduce: str = "last", norm_guard: bool | float = True):
        self.sae, self.latent = sae, sae.check_latent(latent)
        self.site, self.reduce = sae.site, check_reduce(reduce)
        self.norm_cap = _norm_cap(sae, norm_guard)
        self.name = f"{sae.name}/{self.latent}/encoder"

    def token_values(self, x: torch.Tensor) -> torch.Tensor:
        return self.sae.pre_activation(x, [self.latent])[..., 0]

    def dataset_max(self) -> float | None:
        """The latent's maximum over the SAE's corpus (same quantity), if statistics are shipped."""
        st = self.sae.stats
        return st.value("max_activation", self.latent) if st is not None else None


class DecoderProjection(_SiteObjective):
    """The activation's projection on the latent's unit decoder direction."""

    def __init__(self, sae: BoundSAE, latent: int, reduce: str = "last", norm_guard: bool | float = True):
        self.sae, self.latent = sae, sae.check_latent(latent)
        self.site, self.reduce = sae.site, check_reduce(reduce)
        self.norm_cap = _norm_cap(sae, norm_guard)
        self.direction = sae.decoder_direction(self.latent).detach()
        self.name = f"{sae.name}/{self.latent}/decoder"

    def token_values(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.direction.dtype) @ self.direction

    def dataset_max(self) -> float | None:
        st = self.sae.stats
        return st.value("max_projection", self.latent) if st is not None else None


class DirectionObjective(_SiteObjective):
    """Projection of a site's activation on a user-given direction ``[width]`` (normalized).

    ``norm_guard``: True (default) ignores positions above the site's norm cap, a number sets the cap,
    False disables it.
    """

    def __init__(
        self, site: Site, direction: torch.Tensor, reduce: str = "last", norm_guard: bool | float = True
    ):
        direction = torch.as_tensor(direction, dtype=torch.float32)
        if direction.ndim != 1 or not torch.isfinite(direction).all() or direction.norm() == 0:
            raise ValueError(
                f"direction must be a finite, non-zero vector; got shape {tuple(direction.shape)}"
            )
        self.site, self.reduce, self.norm_cap = site, check_reduce(reduce), guard_cap(norm_guard)
        self.direction = direction / direction.norm()
        self.name = f"direction@{site}"

    def token_values(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.direction.shape[0]:
            raise ValueError(
                f"direction has width {self.direction.shape[0]} but {self.site} has width {x.shape[-1]}"
            )
        return x.float() @ self.direction.to(x.device)


class FunctionObjective:
    """A user callable ``fn(acts: dict[Site, Tensor]) -> token values [b, s]``, reduced like the others.

    ``norm_guard``: a position is valid only where every site it reads is under that site's norm cap
    (True: each site's own, measured; a number: one cap for all; False: no guard).
    """

    def __init__(
        self,
        fn: Callable[[dict[Site, torch.Tensor]], torch.Tensor],
        sites: Sequence[Site],
        reduce: str = "last",
        name: str = "function",
        norm_guard: bool | float = True,
    ):
        if not callable(fn):
            raise ValueError(f"objective function {fn!r} is not callable")
        if not sites:
            raise ValueError("a function objective must declare at least one site it reads")
        self.fn, self.sites, self.reduce, self.name = fn, tuple(sites), check_reduce(reduce), name
        self.norm_caps: dict[Site, float | str | None] = {s: guard_cap(norm_guard) for s in self.sites}

    def __call__(self, acts: dict[Site, torch.Tensor], mask: torch.Tensor) -> ObjectiveOutput:
        mask = mask.bool()
        vals = self.fn(acts).float()
        if vals.shape != mask.shape:
            raise ValueError(
                f"objective function returned shape {tuple(vals.shape)}, expected {tuple(mask.shape)}"
            )
        valid = mask
        for site, cap in self.norm_caps.items():
            valid = valid & guarded(acts[site], mask, cap)
        vals = vals.masked_fill(~mask, 0.0)
        return ObjectiveOutput(reduce_positions(vals, valid, mask, self.reduce), vals, valid)


class WeightedSum:
    """``sum_i w_i * objective_i`` (scores and per-token values); valid where all terms are valid."""

    def __init__(self, terms: Sequence[tuple[float, Objective]]):
        if not terms:
            raise ValueError("a weighted sum needs at least one (weight, objective) term")
        self.terms = list(terms)
        self.sites = tuple(dict.fromkeys(s for _, o in self.terms for s in o.sites))
        self.reduce = "+".join(sorted({o.reduce for _, o in self.terms}))
        self.name = " + ".join(f"{w:g}*{o.name}" for w, o in self.terms)

    def __call__(self, acts: dict[Site, torch.Tensor], mask: torch.Tensor) -> ObjectiveOutput:
        outs = [(w, o(acts, mask)) for w, o in self.terms]
        scores = sum(w * out.scores for w, out in outs)
        token_acts = sum(w * out.token_acts for w, out in outs)
        valid = outs[0][1].valid
        for _, out in outs[1:]:
            valid = valid & out.valid
        return ObjectiveOutput(scores, token_acts, valid)


QUERY_KINDS = ("attn_q", "attn_q_rot")


def _query_site(site: Site) -> Site:
    if site.kind not in QUERY_KINDS or site.head is None:
        raise ValueError(
            f"site {site} is not one attention head's query: valid are attn_q / attn_q_rot with a head "
            "(e.g. 'attn_q:18:6', or a sae-lens SAE on blocks.L.attn.hook_q with hook_head_index)"
        )
    return site


class QueryFeature(SAEEncoder):
    """A query-SAE latent's pre-activation on one head: "what is this head looking for?".

    The SAE reads ``[b, s, d_head]`` at ``attn_q`` (before rotary, TransformerLens' ``hook_q``) or
    ``attn_q_rot`` (after the query norm, if any, and rotary: what the attention scores use) for one head.
    """

    def __init__(self, sae: BoundSAE, latent: int, reduce: str = "last", norm_guard: bool | float = True):
        _query_site(sae.site)
        super().__init__(sae, latent, reduce, norm_guard)
        self.name = f"{sae.name}/{self.latent}/query[L{sae.site.layer} H{sae.site.head}]"


class QueryDirection(DirectionObjective):
    """Projection of one head's query on a user direction ``[d_head]``, e.g. a key the head could match.

    The score is the query's similarity to ``k`` (the direction normalized to unit length), so the dream
    answers "which prompt makes this head look for ``k``?". It equals the head's attention logit for a
    key ``k`` (up to the 1/sqrt(d_head) scale) at relative offset 0 only: rotary embedding rotates query
    and key by their positions, so at offset ``j - i`` the logit is ``q^T R(j - i) k``. With
    ``rotary=False`` (the default) the pre-rotary query is used: position-independent, comparable to a
    pre-rotary key such as :func:`featuredream.sites.key_vector` returns. Models with a query/key norm
    (Qwen3, OLMo-2, Gemma-3) normalize both before rotary; pre-rotary sites are read before that norm.
    """

    def __init__(
        self,
        layer: int,
        head: int,
        direction: torch.Tensor,
        reduce: str = "last",
        rotary: bool = False,
        model: torch.nn.Module | None = None,
        norm_guard: bool | float = True,
    ):
        site = Site("attn_q_rot" if rotary else "attn_q", layer, head)
        if model is not None:
            from ..saes.loading import site_width

            model = as_model(model)
            site.validate(model)
            width = site_width(model, site)
            n = torch.as_tensor(direction).numel()
            if torch.as_tensor(direction).ndim != 1 or n != width:
                raise ValueError(
                    f"direction has shape {tuple(torch.as_tensor(direction).shape)} but {site} has width "
                    f"{width}: valid is a vector of {width} numbers"
                )
        super().__init__(site, direction, reduce, norm_guard)
        self.name = f"query-direction@L{layer} H{head}" + (" (rotary)" if rotary else "")


def make_objective(sae: BoundSAE, latent: int, kind: str = "encoder", reduce: str = "last", norm_guard=True):
    """``kind``: ``encoder`` (pre-activation) or ``decoder`` (decoder-direction projection).

    An encoder objective on a one-head query SAE is a :class:`QueryFeature`.
    """
    if kind == "encoder":
        if sae.site.kind in QUERY_KINDS and sae.site.head is not None:
            return QueryFeature(sae, latent, reduce, norm_guard)
        return SAEEncoder(sae, latent, reduce, norm_guard)
    if kind == "decoder":
        return DecoderProjection(sae, latent, reduce, norm_guard)
    raise ValueError(f"unknown objective {kind!r}: valid are encoder, decoder")
