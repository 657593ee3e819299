"""featuredream: dream short, fluent prompts that maximally activate a feature of a language model."""

from .config import DreamConfig
from .models import load_model
from .multi import dream_many
from .objectives import (
    DecoderProjection,
    DirectionObjective,
    FunctionObjective,
    QueryDirection,
    QueryFeature,
    SAEEncoder,
    WeightedSum,
    make_objective,
)
from .optimizer import dream
from .results import DreamResult, Prompt
from .saes import BoundSAE, load_sae
from .sites import Site, parse_hook_name

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
]
__version__ = "0.1.0"
