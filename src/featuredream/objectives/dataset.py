"""Dataset knowledge for any objective: its top corpus windows and its corpus maximum.

An SAE latent whose SAE carries statistics (shipped, or made by ``featuredream stats``) reads them
(:func:`dataset_examples`). Every other objective at a site — an SAE latent without statistics, a direction,
a key-text query direction, a decoder projection without statistics, a callable — is scanned: its
per-token values over the activation store of its sites (:mod:`featuredream.text.activation_store`, 32k tokens of
the default corpus, captured once per model and site and cached), the best position of each window, and
the top windows cut at that position (:func:`scan_objective`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from ..text.activation_store import site_store
from .kinds import resolve_norm_caps

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetExamples:
    """An objective's top corpus examples, best first: ``contexts`` (token ids from the window start to the
    activating token, so scoring one alone gives its value under ``reduce='last'``), their ``values``, the
    corpus ``maximum`` (the ratio's denominator) and where they come from (``source``).

    ``maximum_context``: the context whose last token gives ``maximum`` when scored alone (None when the
    maximum comes from statistics that keep no context, e.g. a decoder projection's ``max_projection``).
    """

    contexts: list[list[int]]
    values: list[float]
    maximum: float | None
    source: str
    maximum_context: list[int] | None = None


def stats_examples(objective) -> DatasetExamples | None:
    """The examples and maximum in the statistics of the objective's SAE, None when it has none or when the
    objective is not the latent's encoder pre-activation (the examples are ranked by it)."""
    from .kinds import SAEEncoder

    sae, latent = getattr(objective, "sae", None), getattr(objective, "latent", None)
    st = getattr(sae, "stats", None)
    if not isinstance(objective, SAEEncoder) or st is None or not st.has("top_tokens"):
        return None
    exs = st.examples(latent)
    maximum = objective.dataset_max() if hasattr(objective, "dataset_max") else None
    tokens, corpus = st.info.get("tokens") or st.info.get("train_positions"), st.info.get("corpus")
    source = "SAE statistics" + (
        f" ({tokens} tokens" + (f" of {corpus})" if corpus else ")") if tokens else ""
    )
    contexts, values = [ids[: pos + 1] for ids, pos, _, _ in exs], [v for *_, v in exs]
    best = contexts[0] if contexts and maximum is not None and values[0] >= maximum else None
    return DatasetExamples(contexts, values, maximum, source, best)


@torch.no_grad()
def token_values(
    model: nn.Module, objective, windows: torch.Tensor, acts=None, batch: int = 64
) -> torch.Tensor:
    """The objective's per-token values on ``windows [n, s]`` -> ``[n, s]`` (``-inf`` where a position is not
    valid or its value is not finite). ``acts``: the sites' activations of ``windows`` when already captured (the activation store),
    else they are captured here."""
    from ..models.sites import run_sites

    p0 = next(model.parameters())
    out = []
    for i in range(0, len(windows), batch):
        ids = windows[i : i + batch].to(p0.device)
        if acts is None:
            part, _ = run_sites(model, objective.sites, input_ids=ids)
        else:
            part = {s: a[i : i + batch].to(p0.device).to(p0.dtype) for s, a in acts.items()}
        res = objective(part, torch.ones(ids.shape, dtype=torch.bool, device=p0.device))
        vals = res.token_acts.float()
        out.append(vals.masked_fill(~res.valid | ~torch.isfinite(vals), -torch.inf).cpu())
    return torch.cat(out)


def top_windows(windows: torch.Tensor, values: torch.Tensor, k: int, source: str, min_tokens: int = 1):
    """The ``k`` windows whose best position (at least ``min_tokens - 1``, so the context ending there has
    ``min_tokens`` tokens) scores highest (ties: the earlier window), each cut at that position.
    ``values [n, s]``: per-token values; the maximum is over every position."""
    best, pos = values[:, min_tokens - 1 :].max(dim=1)
    pos = pos + min_tokens - 1
    order = torch.sort(best, descending=True, stable=True).indices[:k]
    order = order[torch.isfinite(best[order])]
    contexts = [windows[w, : int(pos[w]) + 1].tolist() for w in order]
    top = float(values.max())
    maximum = top if torch.isfinite(torch.tensor(top)) else None
    return DatasetExamples(contexts, [float(best[w]) for w in order], maximum, source)


@torch.no_grad()
def values_alone(model: nn.Module, objective, contexts: list[list[int]]) -> list[float]:
    """Each context run alone (one unpadded forward pass): the objective's value at its last token,
    ``-inf`` where that position is not valid (the norm guard) or not finite."""
    from ..models.sites import run_sites

    dev = next(model.parameters()).device
    out = []
    for ctx in contexts:
        ids = torch.tensor([ctx], device=dev)
        acts, _ = run_sites(model, objective.sites, input_ids=ids)
        res = objective(acts, torch.ones(ids.shape, dtype=torch.bool, device=dev))
        v = float(res.token_acts[0, -1])
        out.append(v if bool(res.valid[0, -1]) and torch.isfinite(torch.tensor(v)) else -float("inf"))
    return out


def rescored(model: nn.Module, objective, found: DatasetExamples, top: list[int] | None) -> DatasetExamples:
    """``found`` with every value (and the maximum, at ``top``: the best position's context) re-measured by
    scoring each context alone (:func:`values_alone`; the store holds float16), best first, so every
    number shown beside a context reproduces from it."""
    vals = values_alone(model, objective, found.contexts + ([top] if top is not None else []))
    order = sorted(range(len(found.contexts)), key=lambda i: -vals[i])
    contexts = [found.contexts[i] for i in order if vals[i] > -float("inf")]
    values = [vals[i] for i in order if vals[i] > -float("inf")]
    cands = list(zip(values, contexts)) + (
        [(vals[-1], top)] if top is not None and vals[-1] > -float("inf") else []
    )
    if not cands:
        return DatasetExamples([], [], None, found.source)
    maximum, where = max(cands, key=lambda c: c[0])
    return DatasetExamples(contexts, values, maximum, found.source, where)


def scan_objective(model: nn.Module, tok, objective, k: int = 8, min_tokens: int = 1) -> DatasetExamples:
    """The objective's ``k`` best windows of the activation store (one example per window, at its best
    valid position with at least ``min_tokens`` tokens of context) and its maximum there (over every valid
    position), each re-measured on its context alone (:func:`rescored`)."""
    resolve_norm_caps(model, tok, objective)
    windows, acts = site_store(model, tok, objective.sites)
    values = token_values(model, objective, windows, acts)
    source = f"corpus scan ({windows.numel()} tokens of the default corpus)"
    found = top_windows(windows, values, k, source, min_tokens)
    top = None
    if found.maximum is not None:
        w, p = divmod(int(values.argmax()), values.shape[1])
        top = windows[w, : p + 1].tolist()
    found = rescored(model, objective, found, top)
    log.info("%s: %d corpus examples, maximum %s", objective.name, len(found.contexts), found.maximum)
    return found


def dataset_examples(model: nn.Module, tok, objective, min_tokens: int = 1) -> DatasetExamples:
    """The SAE's statistics when they hold the objective's examples, else a scan of the activation store;
    a scanned objective whose statistics know a larger maximum (a decoder projection over the statistics'
    corpus) keeps that one as the ratio's denominator."""
    found = stats_examples(objective)
    if found is not None:
        return found
    scan = scan_objective(model, tok, objective, min_tokens=min_tokens)
    known = objective.dataset_max() if hasattr(objective, "dataset_max") else None
    if known is not None and (scan.maximum is None or known > scan.maximum):
        return DatasetExamples(
            scan.contexts, scan.values, known, scan.source + "; maximum from SAE statistics"
        )
    return scan
