"""Closing a dream: re-score the best prompt, the buffer and the frontier from their decoded strings with
the reference path, choose the reported best on those values, and build the :class:`DreamResult`."""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict

import torch

from ..lm.models import model_name
from .buffer import rank_loss
from .evaluate import reference_evaluate
from .results import DreamResult, Prompt, Rung

log = logging.getLogger(__name__)


def prompt_record(tokenizer, ids: list[int], score: float, xe: float, token_acts=None) -> Prompt:
    return Prompt(
        text=tokenizer.decode(ids),
        ids=list(ids),
        activation=float(score),
        xe=float(xe),
        tokens=[tokenizer.decode([i]) for i in ids],
        token_acts=[float(a) for a in (token_acts if token_acts is not None else [])],
    )


def finish_result(
    model, tokenizer, run, *, wall_time: float, interrupted: bool, multi: dict | None = None
) -> DreamResult:
    """Re-score ``run``'s best prompt (and buffer, and frontier) from their decoded strings with the
    reference path and build its :class:`DreamResult`. ``run``: a :class:`~.state.FeatureRun`;
    ``wall_time``: the search's seconds; ``multi``: a group run's undivided figures (``environment``)."""
    t_verify = time.time()
    objective, cfg, limit = run.objective, run.cfg, run.buffer.limit
    entries = [run.best] + [e for e in run.buffer.entries if e is not run.best]
    texts = [tokenizer.decode(e.ids.tolist()) for e in entries]
    ref = reference_evaluate(model, tokenizer, objective, texts)
    i_best, best_p = _reported_best(tokenizer, run, entries, texts, ref)
    best = entries[i_best]
    xe_limit = None if limit is None else limit.at(len(best_p.ids))
    feasible = xe_limit is None or best_p.xe <= xe_limit
    if not feasible:
        log.warning(
            "no candidate satisfied xe_max=%s (%.2f at %d tokens); reporting the best infeasible prompt (XE %.2f)",
            cfg.xe_max,
            xe_limit,
            len(best_p.ids),
            best_p.xe,
        )
    counters = run.counters
    sae = getattr(objective, "sae", None)
    return DreamResult(
        best=best_p,
        buffer=[
            prompt_record(tokenizer, e.ids.tolist(), ref.scores[i], ref.xe[i]) for i, e in enumerate(entries)
        ],
        history=[asdict(h) for h in run.history],
        frontier=_frontier(model, tokenizer, objective, run.frontier.members()),
        config=asdict(cfg),
        objective=objective.name,
        model=model_name(model),
        sae=sae.name if sae is not None else None,
        feature=getattr(objective, "latent", None),
        site=", ".join(str(s) for s in objective.sites),
        seed=cfg.seed,
        wall_time=wall_time,
        start=run.start,
        feasible=feasible,
        xe_limit=xe_limit,
        xe_limits=None if limit is None else limit.describe(cfg.min_tokens, cfg.max_tokens),
        interrupted=interrupted,
        stop_reason=run.stop_reason,
        n_evaluated=counters.evaluated,
        n_nonfinite=counters.nonfinite,
        n_dropped_retokenization=run.canon.dropped,
        n_capped_positions=counters.capped,
        **_dataset_max(run),
        ladder=_ladder(tokenizer, run, entries, texts, ref),
        verification={**_verification(model, best, best_p, cfg.needs_xe), "seconds": time.time() - t_verify},
        environment=_environment(model) | ({"multi": multi} if multi is not None else {}),
    )


def _reported_best(tokenizer, run, entries, texts: list[str], ref) -> tuple[int, Prompt]:
    """The reported best: chosen on the reference values (so feasibility cannot flip between the paths),
    with its re-encoded ids and per-token activations."""
    cfg, limit = run.cfg, run.buffer.limit
    ref_xe = ref.xe if cfg.needs_xe else torch.full_like(ref.xe, torch.nan)
    lims = None if limit is None else limit.of([len(e.ids) for e in entries])
    i = int(torch.argmin(rank_loss(ref.scores.cpu(), ref_xe.cpu(), cfg.xe_regularization, lims)))
    ids = tokenizer(texts[i], add_special_tokens=False)["input_ids"]
    return i, prompt_record(tokenizer, ids, ref.scores[i], ref.xe[i], ref.token_acts[i, : len(ids)].tolist())


def _ladder(tokenizer, run, entries, texts: list[str], ref) -> list[Rung]:
    """Each rung's most activating entry under its ceiling, chosen on the reference values (so a looser
    rung's activation is never below a stricter one's), with its tokens' activations."""
    out = []
    lengths = [len(e.ids) for e in entries]
    for spec in run.rungs:
        lims = None if spec.limit is None else spec.limit.of(lengths)
        i = int(torch.argmin(rank_loss(ref.scores.cpu(), ref.xe.cpu(), 0.0, lims)))
        ids = tokenizer(texts[i], add_special_tokens=False)["input_ids"]
        p = prompt_record(tokenizer, ids, ref.scores[i], ref.xe[i], ref.token_acts[i, : len(ids)].tolist())
        limit = None if spec.limit is None else spec.limit.at(len(ids))
        ceiling = "none" if spec.ceiling is None else str(spec.ceiling)
        out.append(Rung(ceiling, limit, limit is None or p.xe <= limit, p))
    return out


def _dataset_max(run) -> dict:
    """The ratio's denominator and its source: the maximum of the examples the start used (statistics or
    corpus scan), else the one the objective's SAE statistics record."""
    if run.dataset is not None and run.dataset.maximum is not None:
        return {"dataset_max": run.dataset.maximum, "dataset": run.dataset.source}
    objective = run.objective
    known = objective.dataset_max() if hasattr(objective, "dataset_max") else None
    return {"dataset_max": known, "dataset": None if known is None else "SAE statistics"}


def _verification(model, fast, reported: Prompt, needs_xe: bool) -> dict:
    """The fast path's score and XE of the reported prompt, their difference from the reference path's,
    and the tolerance (a warning above it)."""
    err = abs(fast.score - reported.activation)
    low_precision = next(model.parameters()).dtype != torch.float32
    tol = 1e-3 * max(1.0, abs(reported.activation)) + (5e-2 if low_precision else 0)
    if err > tol:
        log.warning(
            "fast-path score %.4f differs from the reference %.4f by more than %.4g",
            fast.score,
            reported.activation,
            tol,
        )
    fast_xe = fast.xe if needs_xe else float("nan")
    return {"fast_activation": fast.score, "fast_xe": fast_xe, "abs_error": err, "tolerance": tol}


def _frontier(model, tokenizer, objective, members: list[list[int]]) -> list[dict]:
    """The frontier's prompts re-scored from their text by the reference path, like the best prompt."""
    texts = [tokenizer.decode(ids) for ids in members]
    if not texts:
        return []
    ref = reference_evaluate(model, tokenizer, objective, texts)
    return [
        {"activation": float(ref.scores[i]), "xe": float(ref.xe[i]), "text": t} for i, t in enumerate(texts)
    ]


def _environment(model) -> dict:
    p0 = next(model.parameters())
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(p0.device),
        "dtype": str(p0.dtype).replace("torch.", ""),
        "featuredream": _version(),
    }


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("featuredream")
    except Exception:
        return "unknown"
