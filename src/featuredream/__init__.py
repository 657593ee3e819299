"""featuredream: dream short, fluent prompts that maximally activate a feature of a language model."""

from .engine.config import DreamConfig
from .engine.dream import dream, dream_many
from .engine.objectives import (
    DecoderProjection,
    DirectionObjective,
    FunctionObjective,
    QueryDirection,
    QueryFeature,
    SAEEncoder,
    WeightedSum,
    make_objective,
)
from .engine.results import DreamResult, Prompt
from .lm.bos import with_bos
from .lm.models import load_model
from .lm.saes import BoundSAE, load_sae
from .lm.sites import Site, parse_hook_name

__all__ = [
    "BoundSAE",
    "DecoderProjection",
    "DirectionObjective",
    "DreamConfig",
    "DreamResult",
    "FunctionObjective",
    "Prompt",
    "SAEEncoder",
    "Site",
    "WeightedSum",
    "QueryDirection",
    "QueryFeature",
    "dream",
    "dream_many",
    "load_model",
    "load_sae",
    "make_objective",
    "parse_hook_name",
    "with_bos",
]
__version__ = "0.1.0"
