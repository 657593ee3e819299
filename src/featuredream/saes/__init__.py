"""Sparse autoencoders: loading, the site check, training and their dataset statistics.

``loading`` (:func:`load_sae`: shipped fixtures, sae-lens directories and registry ids, bound to the site
they read; :class:`FeatureStats`), ``check`` (reconstruction at the declared site against its neighbours),
``activations`` (site activations of padded batches and latent values), ``training`` (the reproducible TopK
recipe of the shipped SAEs) and ``statistics`` (the one statistics pass: maxima, fire rates, top examples
with their whole context, used by ``featuredream stats``, ``train-sae`` and ``inspect examples --corpus``).

May import :mod:`featuredream.models` and :mod:`featuredream.text`; nothing above them.
"""

from .check import check_site, checked_sae, load_checked
from .loading import BoundSAE, FeatureStats, load_sae
from .stats import StatsConfig, StatsInputs, compute_statistics
from .training import TrainConfig, train_sae

__all__ = [
    "BoundSAE",
    "FeatureStats",
    "StatsConfig",
    "StatsInputs",
    "TrainConfig",
    "check_site",
    "checked_sae",
    "compute_statistics",
    "load_checked",
    "load_sae",
    "train_sae",
]
