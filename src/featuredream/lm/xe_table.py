"""The natural-text XE table of a model, cached: what ``--xe-max pNN`` reads for any objective.

The table (quantiles 0..100 of the mean next-token XE of held-out windows cut to each length; see
:func:`featuredream.lm.sae_stats.xe_quantile_table`) belongs to the model and the corpus, not to an SAE:
statistics made by ``featuredream stats`` carry it, and an objective without statistics (a direction, a
key-text query direction, a callable, an SAE without statistics) reads the model's table on the default
corpus (:func:`default_xe_table`), computed once per model (~30 s on a CPU for SmolLM2) and cached.
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

DEFAULT_HELDOUT_TOKENS = 40_000
DEFAULT_CTX = 64


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


def default_xe_table(model: nn.Module, tok, model_id: str) -> dict[str, torch.Tensor]:
    """The model's XE table on the held-out windows of the offline default corpus (64 tokens, 40k tokens,
    seed 0: for the default model these are the windows behind the shipped SAEs' tables)."""
    from .corpus import default_corpus, split_windows

    gen = torch.Generator().manual_seed(0)
    _, held = split_windows(tok, default_corpus(), DEFAULT_CTX, 0, DEFAULT_HELDOUT_TOKENS, gen)
    log.info("natural-text XE table of %s on %d held-out default-corpus windows", model_id, len(held))
    return model_xe_table(model, held, model_id=model_id)


def cached_path(model_id: str) -> Path:
    """Where the tables of ``model_id`` are cached."""
    return cache_dir() / "xe" / _key(model_id)
