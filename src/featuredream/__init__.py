"""featuredream: dream short, fluent prompts that maximally activate a feature of a language model."""

from .engine.config import DreamConfig
from .engine.dream import dream, dream_features, dream_many
from .engine.results import DreamResult, FeatureError, Prompt, Rung
from .models.bos import with_bos
from .models.loading import load_model
from .models.sites import Site, parse_hook_name
from .objectives.group import MultiLatentObjective
from .objectives.kinds import (
    DecoderProjection,
    DirectionObjective,
    FunctionObjective,
    QueryDirection,
    QueryFeature,
    SAEEncoder,
    WeightedSum,
    make_objective,
)
from .observe import feature_card  # importing observe registers DreamResult's notebook view
from .saes.loading import BoundSAE, load_sae
from .text.judge import FluencyJudge

__all__ = [
    "BoundSAE",
    "DecoderProjection",
    "DirectionObjective",
    "DreamConfig",
    "DreamResult",
    "FeatureError",
    "FluencyJudge",
    "FunctionObjective",
    "MultiLatentObjective",
    "Prompt",
    "Rung",
    "SAEEncoder",
    "Site",
    "WeightedSum",
    "QueryDirection",
    "QueryFeature",
    "dream",
    "dream_features",
    "dream_many",
    "feature_card",
    "load_model",
    "load_sae",
    "make_objective",
    "parse_hook_name",
    "with_bos",
]
__version__ = "0.1.0"
