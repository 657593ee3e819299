"""What a sweep runs: :class:`SweepSpec` (everything but the feature list), feature lists (``"0-9,20"``),
and the identity of the model and SAE a spec names.

Everything here is checked where it enters (:class:`SweepSpec` on creation, :func:`parse_features`), so a
bad option fails in one line before a store is touched. Local model and SAE paths are made absolute
(:meth:`SweepSpec.resolved`), so Ray workers in another directory load the same files; their identity
(:func:`model_identity`, :func:`sae_identity`) is what the store's fingerprint compares.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..checks import check_choice, check_int
from ..engine.config import DreamConfig
from ..models.identity import sae_identity
from ..models.loading import DEFAULT_ALIASES, TL_PREFIX, parse_dtype, split_tl
from ..objectives.kinds import check_reduce

__all__ = [
    "MAX_FEATURES",
    "SweepSpec",
    "check_device",
    "count_features",
    "parse_features",
    "sae_width",
]

DEVICE_TYPES = ("cpu", "cuda", "mps")
OBJECTIVES = ("encoder", "decoder")
MAX_FEATURES = 1 << 25
"""Most features one list may hold when no SAE width bounds it (a typo like 0-1638400000 fails fast)."""


@dataclass(frozen=True)
class SweepSpec:
    """Everything a sweep runs except the feature list; plain data, so Ray workers can rebuild it."""

    model: str | None = None
    """Model name or path (None: the embedded default)."""
    sae: str = "default"
    """SAE: fixture name, sae-lens directory, or release:sae_id."""
    kind: str = "encoder"
    """Objective: encoder (pre-activation) or decoder (projection)."""
    reduce: str = "last"
    """Position reduction: last, max, mean."""
    norm_guard: bool = True
    """Exclude massive-activation positions (the SAE's recorded norm cap)."""
    device: str | None = None
    """cpu, cuda, cuda:N (None: cuda if available)."""
    dtype: str | None = None
    """float32, bfloat16, float16 (None: float32 on cpu, bfloat16 on cuda where supported)."""
    config: DreamConfig = field(default_factory=DreamConfig)
    """The dream configuration every feature runs with (same seed for all)."""
    group_size: int = 32
    """Features dreamed together in one multi-feature run."""
    judge: str | None = None
    """Fluency judge of each feature's reported prompts (``default``, a model name, None): it annotates a
    result and never changes a dream, so it is not part of the store's fingerprint."""

    def __post_init__(self) -> None:
        check_int("group_size", self.group_size)
        check_choice(self.kind, OBJECTIVES, "objective")
        check_reduce(self.reduce)
        if self.dtype is not None and not isinstance(self.dtype, str):
            raise ValueError(f"dtype={self.dtype!r} is invalid: valid is a name such as 'bfloat16' or None")
        parse_dtype(self.dtype)
        check_device(self.device)
        if self.dtype == "float16" and self.device is not None and self.device.startswith("cpu"):
            raise ValueError("dtype 'float16' is not supported on cpu: valid are 'float32', 'bfloat16'")

    def resolved(self) -> SweepSpec:
        """This spec with local model and SAE paths absolute (what the store and Ray workers get)."""
        sae = self.sae
        tl, model = split_tl(self.model)
        if model not in DEFAULT_ALIASES and Path(model).expanduser().exists():
            model = os.path.abspath(Path(model).expanduser())
        model = TL_PREFIX + (model or "") if tl else model
        if not sae_identity(sae)[0].startswith("fixture:") and Path(sae).expanduser().exists():
            sae = os.path.abspath(Path(sae).expanduser())
        return replace(self, model=model, sae=sae)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SweepSpec:
        d = dict(d)
        cfg = dict(d.pop("config"))
        if cfg.get("pareto") is not None:
            cfg["pareto"] = tuple(cfg["pareto"])
        known = set(DreamConfig.names())
        return cls(**d, config=DreamConfig(**{k: v for k, v in cfg.items() if k in known}))


def check_device(device) -> None:
    """The device's spelling (not whether this machine has it: a Ray cluster may)."""
    if device is None:
        return
    valid = "valid are 'cpu', 'cuda', 'cuda:N' (or None: cuda if available)"
    try:
        ok = isinstance(device, str) and torch.device(device).type in DEVICE_TYPES
    except (RuntimeError, TypeError):
        ok = False
    if not ok:
        raise ValueError(f"unknown device {device!r}: {valid}")


# ------------------------------------------------------------------------------------ feature lists


def parse_features(text: str, n_latents: int | None = None) -> list[int]:
    """``"3,17,42"``, ``"0-2303"`` or a mix (``"0-9,20,30-39"``) -> sorted feature ids.

    ValueError (one line) for a malformed item, an empty or reversed range, ranges that overlap or
    repeat a feature, (with ``n_latents``) a feature outside ``0..n_latents-1``, or (without) more than
    ``MAX_FEATURES`` features; every check runs before the list is built.
    """
    spans = _spans(text, n_latents)
    return [f for lo, hi, _ in spans for f in range(lo, hi + 1)]


def count_features(text: str, n_latents: int | None = None) -> int:
    """How many features ``text`` names, checked as :func:`parse_features` does, without building them."""
    return sum(hi - lo + 1 for lo, hi, _ in _spans(text, n_latents))


def _spans(text: str, n_latents: int | None) -> list[tuple[int, int, str]]:
    """Sorted, checked ``(first, last, item)`` of a feature list (see :func:`parse_features`)."""
    valid = f"valid are 0..{n_latents - 1}" if n_latents else "valid is e.g. 3,17,42 or 0-2303"
    items = [t.strip() for t in str(text).split(",")]
    if not any(items):
        raise ValueError(f"empty feature list {text!r}: {valid}")
    spans: list[tuple[int, int, str]] = []
    for item in items:
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", item)
        if not m:
            raise ValueError(f"feature range {item!r} is not N or A-B with integers >= 0: {valid}")
        lo, hi = int(m[1]), int(m[2] if m[2] is not None else m[1])
        if hi < lo:
            raise ValueError(f"feature range {item!r} is empty ({hi} < {lo}): {valid}")
        spans.append((lo, hi, item))
    spans.sort()
    for (_, hi1, a), (lo2, _, b) in zip(spans, spans[1:]):
        if lo2 <= hi1:
            raise ValueError(f"feature ranges {a!r} and {b!r} overlap at {lo2}: give each feature once")
    if n_latents is not None and spans[-1][1] >= n_latents:
        raise ValueError(f"feature {spans[-1][1]} ({spans[-1][2]!r}) is out of range: {valid}")
    n = sum(hi - lo + 1 for lo, hi, _ in spans)
    if n_latents is None and n > MAX_FEATURES:
        raise ValueError(f"feature list {text!r} names {n} features: valid is at most {MAX_FEATURES}")
    return spans


# ------------------------------------------------------------------------------------ identities


def sae_width(spec: str) -> int:
    """Number of latents of an SAE spec (read from ``cfg.json`` when there is one; no weights loaded)."""
    _, path = sae_identity(spec)
    if path is not None and (path / "cfg.json").exists():
        try:
            return int(json.loads((path / "cfg.json").read_text())["d_sae"])
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"SAE {spec!r}: cfg.json has no readable d_sae") from None
    return _loaded_width(spec)


@functools.lru_cache(maxsize=4)
def _loaded_width(spec: str) -> int:
    """Width of an SAE with no local ``cfg.json`` (loaded once per process: the CLI and the sweep ask)."""
    from ..saes.loading import load_sae

    return load_sae(spec, device="cpu").d_sae
