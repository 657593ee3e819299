"""What one sweep worker does: load the spec's model and SAE once per process, dream a group of features
together, and record a group's results in the store (the driver's part, shared by every backend).
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field, replace
from typing import Any

from .. import ready
from ..engine.results import FeatureError
from .spec import SweepSpec
from .store import SweepStore

__all__ = ["SweepOutcome", "load_spec", "record", "run_group", "worker_name"]

log = logging.getLogger(__name__)

_LOADED: dict[tuple, tuple] = {}


def load_spec(spec: SweepSpec, check: bool = True):
    """``(model, tokenizer, sae)`` for ``spec``, loaded once per process (Ray workers reuse them)."""
    key = (spec.model, spec.sae, spec.device, spec.dtype)
    if key not in _LOADED:
        from ..saes.check import load_checked

        model, tok, sae = load_checked(
            spec.model, spec.sae, device=spec.device, dtype=spec.dtype, check=check
        )
        _LOADED.clear()
        _LOADED[key] = (model, tok, sae)
    return _LOADED[key]


def run_group(spec: SweepSpec, features: list[int], loaded=None) -> list[tuple[int, Any]]:
    """Dream ``features`` together; ``(feature, DreamResult | FeatureError)`` per feature."""
    from ..engine.dream import dream_many
    from ..objectives.group import MultiLatentObjective

    model, tok, sae = loaded or load_spec(spec)
    obj = MultiLatentObjective(sae, features, spec.kind, spec.reduce, spec.norm_guard)
    cfg = replace(spec.config, progress=False)
    judge = load_judge(spec.judge, model)
    results = dream_many(model, tok, obj, cfg, errors="record", on_interrupt="raise", judge=judge)
    return list(zip(features, results))


_JUDGES: dict[tuple, Any] = {}


def load_judge(name: str | None, model):
    """The fluency judge ``name`` for dreams of ``model`` (on its device; never the model itself by default:
    :func:`~featuredream.text.judge.resolve_judge`), loaded once per process (None: no judge)."""
    if name is None or name == "none":
        return None
    device = next(model.parameters()).device
    key = (name, str(device), id(model))
    if key not in _JUDGES:
        from ..text.judge import resolve_judge

        _JUDGES.clear()
        _JUDGES[key] = resolve_judge(name, device=device, dreamer=model)
    return _JUDGES[key]


def worker_name() -> str:
    """``host:pid`` of this process (stored with each record)."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class SweepOutcome:
    """What a sweep run did: features asked, already done before, written now, failed groups."""

    requested: int
    skipped: int
    written: int
    errors: int
    failed: list[tuple[list[int], str]] = field(default_factory=list)
    seconds: float = 0.0


def record(
    store: SweepStore, results: list[tuple[int, Any]], bar, outcome: SweepOutcome, worker: str
) -> None:
    """Store a group's results (one transaction), count them, and pass the ``sweep-group-written`` ready
    point (:mod:`featuredream.ready`: the group is durable)."""
    outcome.written += store.put(results, worker)
    outcome.errors += sum(isinstance(r, FeatureError) for _, r in results)
    bar.update(len(results))
    ready.reached("sweep-group-written")
