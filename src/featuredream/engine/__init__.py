"""The search: what a dream is, from its config to its result.

``config`` (:class:`DreamConfig`, every knob), ``fluency`` (length-fair XE ceilings), ``starts``,
``mutations`` / ``children`` / ``parent_grads`` (the operators and the gradient they use), ``evaluate`` and
``prefix_cache`` (the hot loop), ``buffer`` and ``readable`` (lanes: the run's ranking, Pareto slots, ladder
rungs, the readable lane), ``state`` and ``clock`` (a feature's state, the time budget), ``loop`` and
``loop_start`` (the one loop for K >= 1 features), ``headline`` and ``finish`` (what a result reports,
re-scored), ``records`` and ``results`` (typed records and the JSON edge), ``dream`` (the front doors).

May import :mod:`featuredream.models`, :mod:`featuredream.text`, :mod:`featuredream.saes` and
:mod:`featuredream.objectives`; nothing above them.
"""

from .config import DEFAULT_LADDER, DreamConfig, log_penalties
from .dream import dream, dream_features, dream_many, judge_results
from .loop import DreamLoop
from .results import DreamResult, FeatureError, Prompt, Rung

__all__ = [
    "DEFAULT_LADDER",
    "DreamConfig",
    "DreamLoop",
    "DreamResult",
    "FeatureError",
    "Prompt",
    "Rung",
    "dream",
    "dream_features",
    "dream_many",
    "judge_results",
    "log_penalties",
]
