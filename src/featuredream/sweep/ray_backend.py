"""The Ray backend of :func:`featuredream.sweep.run_sweep`: one Ray task per group of features.

Every task loads the model and SAE by their spec (absolute paths every node can read, or names; each
worker process loads them once and reuses them for later tasks), dreams its group with
:func:`featuredream.dream_many` (:func:`featuredream.sweep.worker.run_group`), and returns the results to the driver, the store's only writer.

**Resources.** A task asks for one GPU when the cluster has GPUs and the spec does not say
``device='cpu'``; else for :func:`task_cpus` CPUs (and as many torch threads), by default a quarter of
the smallest node's CPUs, so at most ``TASKS_PER_NODE`` model copies share a node's memory
(``cpus_per_task`` / ``--cpus-per-task`` sets it).

**Fingerprint.** The dtype, attention implementation and ``n_children`` a spec resolves to depend on the
hardware (:func:`featuredream.sweep.store.resolve_runtime`), so a probe task with the sweep's resources
resolves them on a worker before the store is opened, and every task returns what it resolved: a group
resolved differently (a cluster of mixed GPUs) is not written and is listed in ``outcome.failed``.

A worker that dies mid-task (killed, out of memory, node lost) has its task retried up to
``max_retries`` times; the store writes by feature id with ``INSERT OR IGNORE``, so a feature is never
written twice. Ray is imported only here, and only when this backend is asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..checks import check_int
from .spec import SweepSpec
from .store import SweepStore, first_difference, resolve_runtime
from .worker import SweepOutcome, load_spec, record, run_group, worker_name

log = logging.getLogger(__name__)

TASKS_PER_NODE = 4
"""Default CPU tasks (model copies) per node: each task gets ``node CPUs // TASKS_PER_NODE`` CPUs."""


def import_ray():
    """The ``ray`` module, or a one-line ValueError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ValueError(
            "--backend ray needs Ray, which is not installed: pip install 'featuredream[ray]' "
            "(or use --backend local)"
        ) from None
    return ray


def task_cpus(node_cpus: list[float], cpus_per_task: int | None, gpus: bool) -> int:
    """CPUs one task asks for on nodes with ``node_cpus`` CPUs (see module doc).

    Given: checked against the biggest node (a bigger request would never be scheduled). None: 1 with
    GPUs, else ``max(1, smallest node // TASKS_PER_NODE)``.
    """
    biggest = int(max(node_cpus, default=0))
    if biggest < 1:
        raise ValueError("the Ray cluster has no node with CPUs: valid is a cluster with at least one CPU")
    if cpus_per_task is not None:
        check_int("cpus_per_task", cpus_per_task)
        if cpus_per_task > biggest:
            raise ValueError(
                f"cpus_per_task={cpus_per_task} is more than any Ray node has: valid are 1..{biggest}"
            )
        return cpus_per_task
    if gpus:
        return 1
    return max(1, int(min(c for c in node_cpus if c >= 1)) // TASKS_PER_NODE)


def _last_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[-1] if text else type(e).__name__


def _probe_runtime(spec_dict: dict[str, Any]) -> dict[str, Any]:
    """Ray task body: what the spec resolves to on a worker with the sweep's resources."""
    return resolve_runtime(SweepSpec.from_dict(spec_dict))


@dataclass(frozen=True)
class GroupOutcome:
    """What a Ray task sends back: its worker's name, the runtime the spec resolved to there, and each
    feature's ``(feature, DreamResult | FeatureError)``."""

    worker: str
    runtime: dict[str, Any]
    results: list


def _dream_group(spec_dict: dict[str, Any], features: list[int], threads: int) -> GroupOutcome:
    """Ray task body: one group dreamed on a worker (:class:`GroupOutcome`)."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    spec = SweepSpec.from_dict(spec_dict)
    return GroupOutcome(worker_name(), resolve_runtime(spec), run_group(spec, features, load_spec(spec)))


@dataclass
class RayRun:
    """A connected cluster, the task options and the runtime the probe resolved; call it to run groups."""

    ray: Any
    opts: dict[str, Any]
    threads: int
    runtime: dict[str, Any]

    def __call__(
        self, spec: SweepSpec, groups: list[list[int]], store: SweepStore, bar, outcome: SweepOutcome
    ) -> None:
        """Run ``groups`` as Ray tasks and write each finished group to ``store`` as it arrives.

        Groups that still fail after the retries are listed in ``outcome.failed``; rerunning with
        ``--resume`` retries exactly them.
        """
        ray = self.ray
        task = ray.remote(_dream_group).options(**self.opts)
        log.info("ray: %d groups on %s", len(groups), ray.cluster_resources())
        spec_dict = spec.to_dict()
        pending = {task.remote(spec_dict, g, self.threads): g for g in groups}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                group = pending.pop(ready[0])
                try:
                    got: GroupOutcome = ray.get(ready[0])
                    worker, runtime, results = got.worker, got.runtime, got.results
                except Exception as e:  # noqa: BLE001 - a task that failed for good; the others go on
                    msg = _last_line(e)
                    log.error("features %d-%d failed: %s", group[0], group[-1], msg)
                    outcome.failed.append((group, msg))
                    continue
                diff = first_difference(self.runtime, runtime)
                if diff is not None:
                    key, a, b = diff
                    msg = f"worker {worker} resolved {key}={b!r}, the sweep has {key}={a!r}: not written"
                    log.error("features %d-%d: %s", group[0], group[-1], msg)
                    outcome.failed.append((group, msg))
                    continue
                record(store, results, bar, outcome, f"ray:{worker}")
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise


@contextmanager
def ray_backend(
    spec: SweepSpec,
    *,
    address: str | None = None,
    workers: int | None = None,
    cpus_per_task: int | None = None,
    max_retries: int = 3,
) -> Iterator[RayRun]:
    """Connect to (or start) a cluster, choose the task resources and probe the runtime (module doc).

    ``address``: a running cluster (``"auto"``, ``"ray://head:10001"``); None starts a local one with
    ``workers`` CPUs (None: all), shut down again on exit.
    """
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address is None:
            kwargs["num_cpus"] = workers
        ray.init(address=address, **kwargs)
    try:
        gpus = ray.cluster_resources().get("GPU", 0) if spec.device != "cpu" else 0
        if not gpus and spec.device is not None and spec.device.startswith("cuda"):
            raise ValueError(
                f"device {spec.device!r} but the Ray cluster has no GPUs: valid is --device cpu (or None)"
            )
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        node_cpus = [r.get("CPU", 0.0) for r in nodes if not gpus or r.get("GPU", 0) > 0]
        cpus = task_cpus(node_cpus, cpus_per_task, bool(gpus))
        opts: dict[str, Any] = {"max_retries": max_retries, "retry_exceptions": False, "num_cpus": cpus}
        if gpus:
            opts["num_gpus"] = 1
        threads = cpus if cpus_per_task is not None or not gpus else 0
        try:
            runtime = ray.get(ray.remote(_probe_runtime).options(**opts).remote(spec.to_dict()))
        except Exception as e:  # noqa: BLE001 - e.g. a worker without featuredream, or no such device
            raise ValueError(
                f"the Ray cluster could not resolve the sweep's runtime: {_last_line(e)}"
            ) from None
        log.info("ray: tasks with %s resolve to %s", opts, runtime)
        yield RayRun(ray, opts, threads, runtime)
    finally:
        if started:
            ray.shutdown()
