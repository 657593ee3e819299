"""Sweeps: dream every feature of a range, one durable record per feature, resumable after a kill.

``run_sweep(spec, features, out_dir)`` dreams the features in groups of ``spec.group_size`` (one
:func:`featuredream.multi.dream_many` per group) and writes each group's finished features to the store
in ``out_dir`` (:mod:`featuredream.sweep_store`: SQLite, one record per feature, a fingerprint that
refuses to mix configurations); ``resume=True`` skips the features already there. Backends: ``local``
(this process) and ``ray`` (:mod:`featuredream.sweep_ray`, one task per group on a Ray cluster).

Everything a user gives is checked before the store is touched (:class:`SweepSpec` on creation, the
feature range, the model path and the device in :func:`run_sweep`), and local model and SAE paths are
made absolute (:meth:`SweepSpec.resolved`), so Ray workers in another directory load the same files.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..engine.config import DreamConfig
from ..lm.models import DEFAULT_ALIASES, parse_dtype, resolve_model_path
from ..engine.multi import FeatureError
from ..engine.objectives import check_reduce
from .store import (
    STORE_FILE,
    SweepStore,
    check_out_dir,
    fingerprint,
    resolve_runtime,
    sae_identity,
    sae_width,
)

__all__ = [
    "STORE_FILE",
    "SweepOutcome",
    "SweepSpec",
    "SweepStore",
    "fingerprint",
    "count_features",
    "parse_features",
    "resolve_runtime",
    "run_sweep",
]

log = logging.getLogger(__name__)

BACKENDS = ("local", "ray")
DEVICE_TYPES = ("cpu", "cuda", "mps")
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

    def __post_init__(self) -> None:
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 1:
            raise ValueError(f"group_size={self.group_size!r} is invalid: valid is an integer >= 1")
        if self.kind not in ("encoder", "decoder"):
            raise ValueError(f"unknown objective {self.kind!r}: valid are encoder, decoder")
        check_reduce(self.reduce)
        if self.dtype is not None and not isinstance(self.dtype, str):
            raise ValueError(f"dtype={self.dtype!r} is invalid: valid is a name such as 'bfloat16' or None")
        parse_dtype(self.dtype)
        _check_device(self.device)
        if self.dtype == "float16" and self.device is not None and self.device.startswith("cpu"):
            raise ValueError("dtype 'float16' is not supported on cpu: valid are 'float32', 'bfloat16'")

    def resolved(self) -> SweepSpec:
        """This spec with local model and SAE paths absolute (what the store and Ray workers get)."""
        model, sae = self.model, self.sae
        if model not in DEFAULT_ALIASES and Path(model).expanduser().exists():
            model = os.path.abspath(Path(model).expanduser())
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


def _check_device(device) -> None:
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


# ------------------------------------------------------------------------------------ feature ranges


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


# ------------------------------------------------------------------------------------ running


_LOADED: dict[tuple, tuple] = {}


def load_spec(spec: SweepSpec, check: bool = True):
    """``(model, tokenizer, sae)`` for ``spec``, loaded once per process (Ray workers reuse them)."""
    key = (spec.model, spec.sae, spec.device, spec.dtype)
    if key not in _LOADED:
        from ..lm.models import load_model
        from ..lm.saes import check_site, load_sae

        model, tok = load_model(spec.model, device=spec.device, dtype=spec.dtype)
        sae = load_sae(spec.sae, model=model)
        if check:
            fvu = check_site(model, tok, sae)
            log.info("SAE %s at %s: FVU %.3f on check texts", sae.name, sae.site.hook_name, fvu)
        _LOADED.clear()
        _LOADED[key] = (model, tok, sae)
    return _LOADED[key]


def run_group(spec: SweepSpec, features: list[int], loaded=None) -> list[tuple[int, Any]]:
    """Dream ``features`` together; ``(feature, DreamResult | FeatureError)`` per feature."""
    from ..engine.multi import dream_many
    from ..engine.multi_objective import MultiLatentObjective

    model, tok, sae = loaded or load_spec(spec)
    obj = MultiLatentObjective(sae, features, spec.kind, spec.reduce, spec.norm_guard)
    cfg = replace(spec.config, progress=False)
    results = dream_many(model, tok, obj, cfg, errors="record", on_interrupt="raise")
    return list(zip(features, results))


def worker_name() -> str:
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


def run_sweep(
    spec: SweepSpec,
    features: list[int],
    out_dir: str | Path,
    *,
    resume: bool = False,
    backend: str = "local",
    address: str | None = None,
    workers: int | None = None,
    cpus_per_task: int | None = None,
    progress: bool = True,
) -> SweepOutcome:
    """Dream ``features`` into ``out_dir`` (see module doc); Ctrl-C keeps every finished feature.

    ``backend='ray'``: ``address`` of a running cluster (None: start a local one with ``workers`` CPUs);
    ``cpus_per_task``: CPUs (and torch threads) per task (None: see :func:`featuredream.sweep_ray.task_cpus`).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: valid are {', '.join(BACKENDS)}")
    if cpus_per_task is not None and backend != "ray":
        raise ValueError(f"cpus_per_task={cpus_per_task!r} applies to the ray backend only: valid is None")
    if backend == "ray":
        from .ray import import_ray

        import_ray()  # fail in one line before any work when Ray is missing
    spec = check_sweep(spec, features, out_dir)
    t0 = time.time()
    if backend == "local":
        outcome = _sweep(spec, features, out_dir, resume, progress, resolve_runtime(spec), _run_local)
    else:
        from .ray import ray_backend

        with ray_backend(spec, address=address, workers=workers, cpus_per_task=cpus_per_task) as run:
            outcome = _sweep(spec, features, out_dir, resume, progress, run.runtime, run)
    outcome.seconds = time.time() - t0
    return outcome


def check_sweep(spec: SweepSpec, features: list[int], out_dir: str | Path) -> SweepSpec:
    """What can be checked before any work (features, SAE width, model path, output directory);
    returns :meth:`SweepSpec.resolved`."""
    if not features:
        raise ValueError("no features to sweep: valid is e.g. 0-2303")
    check_out_dir(out_dir)
    spec = spec.resolved()
    d_sae = sae_width(spec.sae)
    if max(features) >= d_sae or min(features) < 0:
        bad = max(features) if max(features) >= d_sae else min(features)
        raise ValueError(f"feature {bad} is out of range for SAE {spec.sae!r}: valid are 0..{d_sae - 1}")
    if spec.model not in DEFAULT_ALIASES:
        resolve_model_path(spec.model)  # a local directory without config.json fails here
    return spec


def _sweep(spec, features, out_dir, resume, progress, runtime, run_groups) -> SweepOutcome:
    """Open the store for ``runtime``, skip finished features, ``run_groups`` the rest."""
    store = SweepStore.open(out_dir, spec, resume=resume, runtime=runtime)
    try:
        done = store.done()
        todo = [f for f in features if f not in done]
        groups = [todo[i : i + spec.group_size] for i in range(0, len(todo), spec.group_size)]
        outcome = SweepOutcome(len(features), len(features) - len(todo), 0, 0)
        log.info(
            "sweep: %d features, %d already done, %d groups (%s)",
            len(features),
            outcome.skipped,
            len(groups),
            runtime,
        )
        bar = tqdm(
            total=len(features),
            initial=outcome.skipped,
            desc="sweep",
            unit="feature",
            disable=not progress,
            dynamic_ncols=True,
        )
        try:
            if groups:
                run_groups(spec, groups, store, bar, outcome)
        finally:
            bar.close()
    finally:
        store.close()
    return outcome


def _record(
    store: SweepStore, results: list[tuple[int, Any]], bar, outcome: SweepOutcome, worker: str
) -> None:
    """Store a group's results (one transaction) and count them."""
    outcome.written += store.put(results, worker)
    outcome.errors += sum(isinstance(r, FeatureError) for _, r in results)
    bar.update(len(results))


def _run_local(
    spec: SweepSpec, groups: list[list[int]], store: SweepStore, bar, outcome: SweepOutcome
) -> None:
    """One group after another in this process; Ctrl-C loses only the group in progress."""
    loaded = load_spec(spec)
    for group in groups:
        _record(store, run_group(spec, group, loaded), bar, outcome, worker_name())
