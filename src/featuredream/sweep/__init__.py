"""Sweeps over many features, as a chain of modules each importing only those before it:
:mod:`~featuredream.sweep.spec` (what runs) -> :mod:`~featuredream.sweep.store` (SQLite records and their
fingerprint) -> :mod:`~featuredream.sweep.worker` (dream a group, record it) ->
:mod:`~featuredream.sweep.ray_backend` (the Ray backend) -> :mod:`~featuredream.sweep.run` (:func:`run_sweep`);
:mod:`~featuredream.sweep.summary` reads a store.

May import every room below it (models, text, saes, objectives, engine, observe); only the CLI is above it.
"""

from .run import BACKENDS, check_sweep, run_sweep
from .spec import SweepSpec, count_features, parse_features, sae_width
from .store import STORE_FILE, SweepStore, fingerprint, resolve_runtime
from .worker import SweepOutcome

__all__ = [
    "BACKENDS",
    "STORE_FILE",
    "SweepOutcome",
    "SweepSpec",
    "SweepStore",
    "check_sweep",
    "count_features",
    "fingerprint",
    "parse_features",
    "resolve_runtime",
    "run_sweep",
    "sae_width",
]
