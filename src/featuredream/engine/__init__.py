"""The dreaming engine: config, objectives, fluency, mutation operators, starts, the evaluator, the buffer,
the one loop for K >= 1 features, and the results it finishes with."""

from .config import DEFAULT_LADDER, DreamConfig, log_penalties
from .dream import dream, dream_features, dream_many, judge_results
from .group import MultiLatentObjective
from .loop import DreamLoop
from .objectives import (
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
