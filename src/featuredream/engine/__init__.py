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

from ..objectives.group import MultiLatentObjective
from ..objectives.kinds import (
    DecoderProjection,
    DirectionObjective,
    FunctionObjective,
    Objective,
    QueryDirection,
    QueryFeature,
    SAEEncoder,
    WeightedSum,
    make_objective,
)
from .config import DEFAULT_LADDER, DreamConfig, log_penalties
from .dream import dream, dream_features, dream_many, judge_results
from .loop import DreamLoop
from .results import DreamResult, FeatureError, Prompt, Rung

__all__ = [
    "DEFAULT_LADDER",
    "DecoderProjection",
    "DirectionObjective",
    "DreamConfig",
    "DreamLoop",
    "DreamResult",
    "FeatureError",
    "FunctionObjective",
    "MultiLatentObjective",
    "Objective",
    "Prompt",
    "QueryDirection",
    "QueryFeature",
    "Rung",
    "SAEEncoder",
    "WeightedSum",
    "dream",
    "dream_features",
    "dream_many",
    "judge_results",
    "log_penalties",
    "make_objective",
]
