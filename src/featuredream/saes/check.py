"""Checking an SAE's site: its reconstruction (FVU) at the site it declares and at the sites it is easily
confused with (the classic off-by-one: a resid_post SAE read at resid_pre).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..models.loading import text_config
from ..models.sites import Site, kv_head, run_sites
from ..models.tl import as_model
from .loading import BoundSAE

log = logging.getLogger(__name__)

# Short, varied text used to check an SAE's site: English prose, verse, code docs, dialogue.
CHECK_TEXTS = (
    "The old lighthouse keeper climbed the spiral stairs every evening, counting each step as the storm rolled in.",
    'def merge(a, b):\n    """Return a new sorted list with the items of both sorted lists."""\n    out = []',
    "Shall I compare thee to a summer's day? Thou art more lovely and more temperate.",
    "To install the package, run the command below and restart your terminal before continuing.",
    "She laughed and said, 'I told you the train would be late, but nobody ever listens to me.'",
    "In 1848 a wave of revolutions swept across Europe, shaking monarchies from Paris to Vienna.",
)


def adjacent_sites(site: Site, model: nn.Module) -> list[Site]:
    """Sites an SAE could wrongly be read at instead of ``site``: the classic mix-ups.

    Residual: resid_pre vs resid_post of the same layer and the next layer. One head's query / key /
    value / z: every other head of the layer, the same head one layer up and down, and pre- vs
    post-rotary for queries.
    """
    cfg = text_config(model)
    n_layers = cfg.num_hidden_layers
    if site.kind == "resid_post":
        cands = [Site("resid_pre", site.layer), Site("resid_post", site.layer + 1)]
    elif site.kind == "resid_pre":
        cands = [Site("resid_post", site.layer), Site("resid_pre", site.layer - 1) if site.layer else None]
    elif site.head is not None:
        n_heads = cfg.num_attention_heads
        if site.kind in ("attn_k", "attn_v"):  # heads of the same key/value group read the same vector
            heads = [h for h in range(n_heads) if kv_head(model, h) != kv_head(model, site.head)]
            first: dict[int, int] = {}
            for h in heads:
                first.setdefault(kv_head(model, h), h)
            heads = list(first.values())
        else:
            heads = [h for h in range(n_heads) if h != site.head]
        cands = [Site(site.kind, site.layer, h) for h in heads]
        cands += [Site(site.kind, site.layer + d, site.head) for d in (-1, 1) if site.layer + d >= 0]
        if site.kind in ("attn_q", "attn_q_rot"):
            cands.append(Site("attn_q_rot" if site.kind == "attn_q" else "attn_q", site.layer, site.head))
    else:
        cands = []
    return [c for c in cands if c is not None and c.layer < n_layers]


@torch.no_grad()
def _site_acts(model: nn.Module, tokenizer, sites: list[Site], texts) -> dict[Site, torch.Tensor]:
    """``{site: [n_tokens, width]}`` over all ``texts`` (float32), captured in one pass per text."""
    dev = next(model.parameters()).device
    out: dict[Site, list[torch.Tensor]] = {s: [] for s in sites}
    for t in texts:
        ids = torch.tensor([tokenizer(t, add_special_tokens=False)["input_ids"]], device=dev)
        acts, _ = run_sites(model, sites, input_ids=ids)
        for s in sites:
            out[s].append(acts[s][0].reshape(ids.shape[1], -1).float())
    return {s: torch.cat(v) for s, v in out.items()}


@torch.no_grad()
def _fvu(sae: BoundSAE, x: torch.Tensor) -> float:
    norms = x.norm(dim=-1)
    cap = sae.stats.norm_cap if sae.stats is not None and sae.stats.norm_cap else 3 * float(norms.median())
    x = x[norms <= cap]
    err = (x - sae.reconstruct(x).float()).pow(2).sum()
    return float(err / (x - x.mean(0)).pow(2).sum().clamp_min(1e-12))


def site_fvu(
    model: nn.Module, tokenizer, sae: BoundSAE, texts=CHECK_TEXTS, site: Site | None = None
) -> float:
    """Fraction of variance unexplained by ``sae`` on ``texts`` read at ``site`` (default: its own).

    Positions above the SAE's norm cap (or 3x the median norm when it has none) are left out.
    """
    site = site or sae.site
    model = as_model(model, tokenizer)
    return _fvu(sae, _site_acts(model, tokenizer, [site], texts)[site])


def check_site(
    model: nn.Module, tokenizer, sae: BoundSAE, *, max_fvu: float = 0.5, margin: float = 0.05
) -> float:
    """Measure the SAE's reconstruction at its declared site and at the sites it is easily confused with.

    ValueError if the declared site reconstructs poorly (FVU > ``max_fvu``) or an adjacent site does
    better by more than ``margin`` (relative): the classic off-by-one (a resid_post SAE read at
    resid_pre) is caught even when the residual stream changes little between layers, and so is a query SAE
    bound to the wrong head or read after rotary when trained before it (see :func:`adjacent_sites`). Returns the FVU.
    """
    model = as_model(model, tokenizer)
    alt = adjacent_sites(sae.site, model)
    acts = _site_acts(model, tokenizer, [sae.site, *alt], CHECK_TEXTS)
    fvu = _fvu(sae, acts[sae.site])
    others = {s: _fvu(sae, acts[s]) for s in alt}
    better = min(others.items(), key=lambda kv: kv[1], default=None)
    # relative margin plus an absolute floor: two near-exact fits (FVU ~1e-7) differ only by float noise
    if better is not None and better[1] < fvu * (1 - margin) - 1e-4:
        raise ValueError(
            f"SAE {sae.name!r} declared at {sae.site} reconstructs better at {better[0]} "
            f"(FVU {better[1]:.3f} vs {fvu:.3f}): are its hook_name / hook_head_index right for this model?"
        )
    if fvu > max_fvu:
        raise ValueError(
            f"SAE {sae.name!r} reconstructs poorly at its declared site {sae.site.hook_name} "
            f"(FVU {fvu:.2f} > {max_fvu}): is it trained on this model?"
        )
    return fvu


def checked_sae(model: nn.Module, tokenizer, spec: str, *, stats_dir=None, check: bool = True) -> BoundSAE:
    """The SAE ``spec`` loaded for ``model`` (its statistics found as :func:`~.saes.load_sae` does) and,
    with ``check``, its site checked (:func:`check_site`: a one-line ValueError for an SAE that does not
    fit its declared site)."""
    from .loading import load_sae

    sae = load_sae(spec, model=model, stats_dir=stats_dir)
    if check:
        fvu = check_site(model, tokenizer, sae)
        log.info("SAE %s at %s: FVU %.3f on check texts", sae.name, sae.site.hook_name, fvu)
    return sae


def load_checked(model_name: str | None, sae_spec: str, *, device=None, dtype=None, check: bool = True):
    """``(model, tokenizer, sae)``: the model loaded and :func:`checked_sae`. The one loader of the CLI
    commands and the sweep workers."""
    from ..models.loading import load_model

    model, tok = load_model(model_name, device=device, dtype=dtype)
    return model, tok, checked_sae(model, tok, sae_spec, check=check)
