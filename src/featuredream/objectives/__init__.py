"""What a dream maximizes.

``kinds`` (the objectives: an SAE latent's encoder pre-activation, its decoder projection, a query feature,
a direction, a key-text query direction, any callable, a weighted sum; reductions over real tokens; the norm
guard), ``group`` (K objectives scored in one pass) and ``dataset`` (an objective's top corpus examples and
its dataset maximum: from its SAE's statistics or a scan of the activation store).

May import :mod:`featuredream.models`, :mod:`featuredream.text` and :mod:`featuredream.saes`.
"""

from .dataset import DatasetExamples, dataset_examples, scan_objective
from .group import MultiLatentObjective, ObjectiveGroup, Single
from .kinds import (
    DecoderProjection,
    DirectionObjective,
    FunctionObjective,
    Objective,
    QueryDirection,
    QueryFeature,
    SAEEncoder,
    WeightedSum,
    make_objective,
    resolve_norm_caps,
)

__all__ = [
    "DatasetExamples",
    "DecoderProjection",
    "DirectionObjective",
    "FunctionObjective",
    "MultiLatentObjective",
    "Objective",
    "ObjectiveGroup",
    "QueryDirection",
    "QueryFeature",
    "SAEEncoder",
    "Single",
    "WeightedSum",
    "dataset_examples",
    "make_objective",
    "resolve_norm_caps",
    "scan_objective",
]
