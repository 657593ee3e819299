"""The language model layer: loading models, sites and hook points, SAEs and their site check, corpora,
statistics, SAE training and the fluency judge."""

from .bos import with_bos
from .corpus import default_corpus, load_corpus
from .judge import FluencyJudge, JudgeScore
from .models import load_model
from .prose import prose_documents
from .sae_check import check_site, checked_sae, load_checked
from .saes import BoundSAE, FeatureStats, load_sae
from .sites import Site, parse_hook_name
from .stats_pass import StatsConfig, StatsInputs, compute_statistics
from .train_sae import TrainConfig, train_sae

__all__ = [
    "BoundSAE",
    "FeatureStats",
    "FluencyJudge",
    "JudgeScore",
    "Site",
    "StatsConfig",
    "StatsInputs",
    "TrainConfig",
    "check_site",
    "checked_sae",
    "compute_statistics",
    "default_corpus",
    "load_checked",
    "load_corpus",
    "load_model",
    "load_sae",
    "parse_hook_name",
    "prose_documents",
    "train_sae",
    "with_bos",
]
