"""Run a sweep: dream every feature of a list, one durable record per feature, resumable after a kill.

``run_sweep(spec, features, out_dir)`` dreams the features in groups of ``spec.group_size`` (one
:func:`featuredream.dream_many` per group, :func:`featuredream.sweep.worker.run_group`) and writes each
group's finished features to the store in ``out_dir`` (:mod:`featuredream.sweep.store`: SQLite, one
record per feature, a fingerprint that refuses to mix configurations); ``resume=True`` skips the features
already there. Backends: ``local`` (this process) and ``ray`` (:mod:`featuredream.sweep.ray_backend`, one task per
group on a Ray cluster).

Everything a user gives is checked before the store is touched (:class:`~featuredream.sweep.SweepSpec` on
creation, then the feature range, the model path and the output directory in :func:`check_sweep`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from tqdm.auto import tqdm

from ..checks import check_choice
from ..models.loading import DEFAULT_ALIASES, resolve_model_path
from .spec import SweepSpec, sae_width
from .store import SweepStore, check_out_dir, resolve_runtime
from .worker import SweepOutcome, load_spec, record, run_group, worker_name

__all__ = ["BACKENDS", "check_sweep", "run_sweep"]

log = logging.getLogger(__name__)

BACKENDS = ("local", "ray")


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
    ``cpus_per_task``: CPUs (and torch threads) per task (None: see :func:`featuredream.sweep.ray_backend.task_cpus`).
    """
    check_choice(backend, BACKENDS, "backend")
    if cpus_per_task is not None and backend != "ray":
        raise ValueError(f"cpus_per_task={cpus_per_task!r} applies to the ray backend only: valid is None")
    if backend == "ray":
        from .ray_backend import import_ray

        import_ray()  # fail in one line before any work when Ray is missing
    spec = check_sweep(spec, features, out_dir)
    t0 = time.time()
    if backend == "local":
        outcome = _sweep(spec, features, out_dir, resume, progress, resolve_runtime(spec), _run_local)
    else:
        from .ray_backend import ray_backend

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


def _run_local(
    spec: SweepSpec, groups: list[list[int]], store: SweepStore, bar, outcome: SweepOutcome
) -> None:
    """One group after another in this process; Ctrl-C loses only the group in progress."""
    loaded = load_spec(spec)
    for group in groups:
        record(store, run_group(spec, group, loaded), bar, outcome, worker_name())
