"""Closing a dream: re-score the best prompt, the buffer and the frontier from their decoded strings with
the reference path, choose the reported best on those values, and build the :class:`DreamResult`."""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass

import torch

from ..evaluation.evaluate import reference_evaluate
from ..models.loading import model_name
from .buffer import rank_loss
from .headline import activating_order, dream_record, pick_dreams, reference_entries
from .records import Dream, Environment, FrontierPoint, MultiRun, Prompt, Rung, SetupStep, Verification
from .results import DreamResult

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
    model,
    tokenizer,
    run,
    *,
    wall_time: float,
    interrupted: bool,
    multi: MultiRun | None = None,
    setup: list[SetupStep] | None = None,
) -> DreamResult:
    """Re-score ``run``'s best prompt (and buffer, and frontier) from their decoded strings with the
    reference path and build its :class:`DreamResult`. ``run``: a :class:`~.state.FeatureRun`;
    ``wall_time``: the search's seconds; ``multi``: a group run's undivided figures (``environment``);
    ``setup``: the one-time steps before the search."""
    t_verify = time.time()
    objective, cfg, limit = run.objective, run.cfg, run.buffer.limit
    entries = candidates(run)
    texts = [tokenizer.decode(e.ids.tolist()) for e in entries]
    ref = reference_evaluate(model, tokenizer, objective, texts)
    choice = _choose(tokenizer, run, entries, texts, ref)
    best, best_p = entries[choice.index], choice.prompt
    xe_limit = None if limit is None else limit.at(len(best_p.ids))
    feasible = xe_limit is None or best_p.xe <= xe_limit
    if not feasible:
        log.warning(
            "no candidate met xe_max=%s (%.2f at %d tokens); reporting the least infeasible (XE %.2f)",
            *(cfg.xe_max, xe_limit, len(best_p.ids), best_p.xe),
        )
    return DreamResult(
        best=best_p,
        buffer=[
            prompt_record(tokenizer, e.ids.tolist(), ref.scores[i], ref.xe[i])
            for i, e in enumerate(entries)
            if i <= len(run.buffer.entries)
        ],
        history=list(run.history),
        frontier=_frontier(model, tokenizer, objective, run.frontier.members()),
        **_identity(model, objective, cfg),
        wall_time=wall_time,
        start=run.start,
        feasible=feasible,
        xe_limit=xe_limit,
        xe_limits=None if limit is None else limit.describe(cfg.min_tokens, cfg.max_tokens),
        interrupted=interrupted,
        stop_reason=run.stop_reason,
        **_counts(run),
        **_dataset_max(run),
        ladder=_ladder(tokenizer, run, entries, texts, ref),
        verification=_verification(model, best, best_p, cfg.needs_xe, time.time() - t_verify),
        environment=_environment(model, multi),
        setup=list(setup or []),
        norm_cap=_norm_cap(objective),
        headline=choice.headline,
        floor=run.floor,
        most_activating=choice.most_activating,
        dreams=choice.dreams,
    )


def _norm_cap(objective) -> float | None:
    """The objective's norm cap (one site's), None without a guard or with several sites."""
    cap = getattr(objective, "norm_cap", None)
    if cap is None and len(getattr(objective, "norm_caps", None) or {}) == 1:
        cap = next(iter(objective.norm_caps.values()))
    return float(cap) if isinstance(cap, int | float) else None


def candidates(run) -> list:
    """What the result chooses from: the best entry, the buffer (every lane), and, when several dreams are
    asked for, the best ``4 * dreams`` start prompts not used (other windows: distinct dreams to fill with)."""
    entries = [run.best] + [e for e in run.buffer.entries if e is not run.best]
    if run.cfg.dreams > 1:
        keys = {e.key() for e in entries}
        entries += [e for e in run.unused[: 4 * run.cfg.dreams] if e.key() not in keys]
    return entries


@dataclass
class Choice:
    """What a result reports, chosen on the reference values (so feasibility or the floor cannot flip
    between the paths): the headline's index among the candidates and its prompt, its kind, the most
    activating prompt and the distinct dreams."""

    index: int
    prompt: Prompt
    headline: str
    most_activating: Prompt
    dreams: list[Dream]


def _choose(tokenizer, run, entries, texts: list[str], ref) -> Choice:
    """The headline (the most readable candidate reaching the floor, else the most activating under the
    ceiling), the most activating one and the dreams (:mod:`.headline`), each with its re-encoded ids and
    per-token activations."""

    def prompt(i: int) -> Prompt:
        ids = tokenizer(texts[i], add_special_tokens=False)["input_ids"]
        return prompt_record(tokenizer, ids, ref.scores[i], ref.xe[i], ref.token_acts[i, : len(ids)].tolist())

    ref_entries = reference_entries(entries, ref)
    i_max = activating_order(run, ref_entries)[0]
    picked, above, _ = pick_dreams(run, ref_entries)
    lane = run.buffer.readable_lane
    rule = run.buffer.rules[lane] if lane is not None else None
    dreams = [dream_record(prompt(i), ref_entries[i], a, rule) for i, a in zip(picked, above)]
    if above and above[0]:
        return Choice(picked[0], dreams[0].prompt, "readable", prompt(i_max), dreams)
    return Choice(i_max, prompt(i_max), "most activating", prompt(i_max), dreams)


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


def _identity(model, objective, cfg) -> dict:
    """What was dreamed: config, objective, model, SAE, feature, site, seed."""
    sae = getattr(objective, "sae", None)
    return dict(
        config=cfg,
        objective=objective.name,
        model=model_name(model),
        sae=sae.name if sae is not None else None,
        feature=getattr(objective, "latent", None),
        site=", ".join(str(s) for s in objective.sites),
        seed=cfg.seed,
    )


def _counts(run) -> dict:
    """The result's candidate counts: evaluated, non-finite, dropped at re-encoding, capped positions."""
    c = run.counters
    return dict(
        n_evaluated=c.evaluated,
        n_nonfinite=c.nonfinite,
        n_dropped_retokenization=run.canon.dropped,
        n_capped_positions=c.capped,
    )


def _dataset_max(run) -> dict:
    """The ratio's denominator and its source: the maximum of the examples the start used (statistics or
    corpus scan), else the one the objective's SAE statistics record."""
    dmax, source = run.dataset_maximum()
    return {"dataset_max": dmax, "dataset": source}


def _verification(model, fast, reported: Prompt, needs_xe: bool, seconds: float) -> Verification:
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
    return Verification(fast.score, fast_xe, err, tol, seconds)


def _frontier(model, tokenizer, objective, members: list[list[int]]) -> list[FrontierPoint]:
    """The frontier's prompts re-scored from their text by the reference path, like the best prompt."""
    texts = [tokenizer.decode(ids) for ids in members]
    if not texts:
        return []
    ref = reference_evaluate(model, tokenizer, objective, texts)
    return [FrontierPoint(float(ref.scores[i]), float(ref.xe[i]), t) for i, t in enumerate(texts)]


def _environment(model, multi: MultiRun | None) -> Environment:
    p0 = next(model.parameters())
    dtype = str(p0.dtype).replace("torch.", "")
    return Environment(torch.__version__, platform.python_version(), str(p0.device), dtype, _version(), multi)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("featuredream")
    except Exception:
        return "unknown"
