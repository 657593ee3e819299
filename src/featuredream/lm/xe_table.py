"""The natural-text XE table of a model, cached: what ``--xe-max pNN`` reads for any objective.

The table (quantiles 0..100 of the mean next-token XE of natural windows cut to each length; see
:func:`featuredream.lm.sae_stats.xe_quantile_table`) belongs to the model, not to an SAE. Its natural text
is the plain-prose reference corpus (:mod:`.prose`: news and documentation, held out from SAE training):
:func:`reference_xe_table`, computed once per model (~30 s on a CPU for SmolLM2) and cached. Statistics
made by ``featuredream stats`` (and the shipped SAEs') carry the same table; an objective without
statistics (a direction, a key-text query direction, a callable, an SAE without statistics) reads it
directly.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .models import cache_dir
from .sae_stats import windows_digest, xe_quantile_table

log = logging.getLogger(__name__)


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_xe_table(
    model: nn.Module, windows: torch.Tensor, *, model_id: str, batch: int = 32
) -> dict[str, torch.Tensor]:
    """``xe_lengths [L-1]`` and ``xe_quantiles [L-1, 101]`` of ``windows [n, L]`` under ``model``, read from
    the cache when this model already scored exactly these windows."""
    path = cache_dir() / "xe" / _key(model_id) / f"{windows_digest(windows)}.safetensors"
    if path.exists():
        return load_file(str(path))
    table = xe_quantile_table(model, windows, batch)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in table.items()}, str(tmp), metadata={"model": model_id})
    tmp.replace(path)
    return table


def reference_xe_table(model: nn.Module, tok, model_id: str, batch: int = 32) -> dict[str, torch.Tensor]:
    """The model's XE table on the prose reference windows (:func:`~.prose.prose_windows`: 640 windows
    of 64 tokens, half news, half documentation, seed 0)."""
    from .prose import prose_windows

    windows = prose_windows(tok)
    log.info("natural-text XE table of %s on %d prose windows", model_id, len(windows))
    return model_xe_table(model, windows, model_id=model_id, batch=batch)


REFERENCE_DESCRIPTION = (
    "prose: 640 windows of 64 tokens, half news (Lee corpus), half documentation (docutils)"
)
"""What ``xe_reference`` = ``prose`` means, written into statistics' provenance."""


def cached_path(model_id: str) -> Path:
    """Where the tables of ``model_id`` are cached."""
    return cache_dir() / "xe" / _key(model_id)
