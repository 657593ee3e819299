"""The front doors: :func:`dream` (one objective), :func:`dream_many` (K latents of one SAE together) and
:func:`dream_features` (many latents, in groups). All three run the one :class:`~.loop.DreamLoop`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from torch import nn

from ..checks import check_int
from ..objectives.group import MultiLatentObjective, Single
from ..objectives.kinds import Objective
from ..text.judge import FluencyJudge, resolve_judge
from .config import DreamConfig
from .loop import DreamLoop
from .results import DreamResult, FeatureError

log = logging.getLogger(__name__)


def dream(
    model: nn.Module,
    tokenizer,
    objective: Objective,
    config: DreamConfig | None = None,
    *,
    judge: FluencyJudge | str | None = None,
) -> DreamResult:
    """Find a short, fluent prompt that maximizes ``objective``. See :class:`DreamConfig` for the knobs.

    ``judge``: a fluency judge (:mod:`featuredream.text.judge`; ``"default"`` = Gemma 3 270M, a model name, a
    :class:`FluencyJudge`, or None) that scores the best prompt and each ladder rung after the search (it is
    never used inside it): ``result.judge``, ``rung.judge``. Loaded before the search, so a bad name fails
    at once. Ctrl-C stops the loop and returns the best so far (``interrupted=True``).
    """
    judge = resolve_judge(judge, device=_device(model), dreamer=model)
    result = DreamLoop(model, tokenizer, Single(objective), config or DreamConfig()).run()[0]
    judge_results([result], judge)
    return result


def judge_results(results: Sequence, judge: FluencyJudge | None) -> None:
    """Score every result's best prompt, ladder rungs and dreams with ``judge`` (in place; nothing without one)."""
    if judge is None:
        return
    done = [r for r in results if isinstance(r, DreamResult)]
    prompts = [
        p for r in done for p in [r.best] + [g.prompt for g in r.ladder] + [d.prompt for d in r.dreams]
    ]
    scores = iter(judge.score([p.text for p in prompts]))
    for r in done:
        r.judge = next(scores)
        for g in [*r.ladder, *r.dreams]:
            g.judge = next(scores)


def _device(model: nn.Module):
    return next(model.parameters()).device


def dream_many(
    model: nn.Module,
    tokenizer,
    objective: MultiLatentObjective,
    config: DreamConfig | None = None,
    *,
    seeds: Sequence[int] | None = None,
    errors: str = "raise",
    on_interrupt: str = "finish",
    judge: FluencyJudge | str | None = None,
) -> list[DreamResult | FeatureError]:
    """Dream each latent of ``objective`` together (:mod:`.loop`); one :class:`DreamResult` per latent.

    The K parents' gradient passes are one forward + backward, all K features' children go to the model in
    one batch and one SAE matmul scores them; each feature keeps its own seed, generator, buffer and
    restarts, so the run equals K single runs (see :mod:`.loop`). ``seeds[k]`` (default: ``config.seed`` for
    all) is feature k's seed. ``errors='raise'``: a feature that cannot start raises ``ValueError`` naming
    it; ``'record'``: it yields a :class:`FeatureError` instead. Ctrl-C: ``on_interrupt='finish'`` stops the
    loop and returns the best so far of every feature (``interrupted=True``); ``'raise'`` re-raises at once
    (a sweep discards unfinished features anyway). ``wall_time`` is the group's time divided among the
    features; the undivided figures are in ``environment.multi``. ``judge``: as for :func:`dream`.
    """
    if errors not in ("raise", "record"):
        raise ValueError(f"errors={errors!r}: valid are 'raise', 'record'")
    if on_interrupt not in ("finish", "raise"):
        raise ValueError(f"on_interrupt={on_interrupt!r}: valid are 'finish', 'raise'")
    judge = resolve_judge(judge, device=_device(model), dreamer=model)
    loop = DreamLoop(model, tokenizer, objective, config or DreamConfig(), seeds)
    log.info("dreaming %d features of %s together", len(objective), objective.sae.name)
    results = loop.run(errors, on_interrupt)
    judge_results(results, judge)
    return results


def dream_features(
    model: nn.Module,
    tokenizer,
    sae,
    features: Sequence[int],
    config: DreamConfig | None = None,
    *,
    kind: str = "encoder",
    reduce: str = "last",
    norm_guard: bool | float = True,
    group_size: int = 32,
    errors: str = "raise",
    judge: FluencyJudge | str | None = None,
    on_group: Callable[[list[int], list[DreamResult | FeatureError]], None] | None = None,
) -> list[DreamResult | FeatureError]:
    """Dream ``features`` of ``sae`` in groups of ``group_size`` (one :func:`dream_many` per group).

    ``on_group(group, results)`` is called as each group finishes (e.g. to write its files at once). Ctrl-C
    in a group's loop ends that group with its best so far (``interrupted=True``) and stops: the list then
    ends with that group. A Ctrl-C elsewhere propagates; groups already given to ``on_group`` are done.
    """
    check_int("group_size", group_size)
    out: list[DreamResult | FeatureError] = []
    for i in range(0, len(features), group_size):
        group = list(features[i : i + group_size])
        obj = MultiLatentObjective(sae, group, kind, reduce, norm_guard)
        results = dream_many(model, tokenizer, obj, config, errors=errors, judge=judge)
        out += results
        if on_group is not None:
            on_group(group, results)
        if any(isinstance(r, DreamResult) and r.interrupted for r in results):
            log.warning("interrupted: stopping after features %d..%d", group[0], group[-1])
            break
    return out
