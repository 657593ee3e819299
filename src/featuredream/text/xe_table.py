"""The natural-text XE table of a model, cached: what ``--xe-max pNN`` reads for any objective.

The table (quantiles 0..100 of the mean next-token XE of natural windows cut to each length; see
:func:`featuredream.text.xe_table.xe_quantile_table`) belongs to the model, not to an SAE. Its natural text
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
from tqdm.auto import tqdm

from ..models.loading import cache_dir
from ..models.xe import token_xe
from .corpus import windows_digest

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


@torch.no_grad()
def prefix_xe(
    model: nn.Module, windows: torch.Tensor, batch: int = 32, desc: str = "XE table"
) -> torch.Tensor:
    """``[n, L-1]`` float32: column ``j`` is the mean next-token XE of each window's first ``j + 2`` tokens
    (the model is causal, so that is the XE of the ``j + 2``-token text alone) for ``windows [n, L]``."""
    dev = next(model.parameters()).device
    prefix = []
    for i in tqdm(range(0, len(windows), batch), desc=desc, unit="batch", disable=None):  # None: a TTY only
        ids = windows[i : i + batch].to(dev)
        mask = torch.ones_like(ids, dtype=torch.bool)
        xe, _ = token_xe(model(input_ids=ids, use_cache=False).logits, ids, mask)
        prefix.append((xe.cumsum(1) / torch.arange(1, ids.shape[1], device=dev)).float().cpu())
    return torch.cat(prefix)


@torch.no_grad()
def xe_quantile_table(model: nn.Module, windows: torch.Tensor, batch: int = 32) -> dict[str, torch.Tensor]:
    """Natural-text XE by length from ``windows [n, L]``: :func:`prefix_xe` for ``m`` = 2..L tokens, then
    its percentiles 0..100 over the windows.

    Returns ``xe_lengths [L-1]`` (int32: 2..L) and ``xe_quantiles [L-1, 101]`` (float32).
    """
    table = prefix_xe(model, windows, batch)  # [n, L-1]
    q = torch.quantile(table.double(), torch.linspace(0, 1, 101, dtype=torch.double), dim=0)  # [101, L-1]
    return {
        "xe_lengths": torch.arange(2, windows.shape[1] + 1, dtype=torch.int32),
        "xe_quantiles": q.T.float().contiguous(),
    }
