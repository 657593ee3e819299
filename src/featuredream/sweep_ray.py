"""The Ray backend of :func:`featuredream.sweep.run_sweep`: one Ray task per group of features.

Every task loads the model and SAE by their spec (a name or a path every node can read; each worker
process loads them once and reuses them for later tasks), dreams its group with
:func:`featuredream.multi.dream_many`, and returns the results to the driver, the store's only writer.
A task asks for one GPU when the cluster has GPUs and the spec does not say ``device='cpu'``, else for
``cpus_per_task`` CPUs, so Ray runs one task per GPU (or per CPU slot) at a time. A worker that dies
mid-task (killed, out of memory, node lost) has its task retried up to ``max_retries`` times; the
store writes by feature id with ``INSERT OR IGNORE``, so a feature is never written twice. Ray is
imported only here, and only when this backend is asked for.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


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


def _dream_group(spec_dict: dict[str, Any], features: list[int], threads: int) -> tuple[str, list]:
    """Ray task body: ``(worker name, [(feature, DreamResult | FeatureError), ...])``."""
    import torch

    from .sweep import SweepSpec, load_spec, run_group, worker_name

    if threads > 0:
        torch.set_num_threads(threads)
    spec = SweepSpec.from_dict(spec_dict)
    return worker_name(), run_group(spec, features, load_spec(spec))


def run_ray(
    spec,
    groups: list[list[int]],
    store,
    bar,
    outcome,
    *,
    address: str | None = None,
    workers: int | None = None,
    cpus_per_task: int = 1,
    max_retries: int = 3,
) -> None:
    """Run ``groups`` as Ray tasks and write each finished group to ``store`` as it arrives.

    ``address``: a running cluster (``"auto"``, ``"ray://head:10001"``); None starts a local one with
    ``workers`` CPUs (None: all). Groups that still fail after ``max_retries`` are listed in
    ``outcome.failed``; rerunning with ``--resume`` retries exactly them.
    """
    if not groups:
        return
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address is None:
            kwargs["num_cpus"] = workers
        ray.init(address=address, **kwargs)
    try:
        gpus = ray.cluster_resources().get("GPU", 0) if spec.device != "cpu" else 0
        opts = {"max_retries": max_retries, "retry_exceptions": False}
        if gpus:
            opts |= {"num_gpus": 1, "num_cpus": 1}
            threads = 0
        else:
            opts |= {"num_cpus": cpus_per_task}
            threads = cpus_per_task
        task = ray.remote(_dream_group).options(**opts)
        log.info("ray: %d groups on %s", len(groups), ray.cluster_resources())
        spec_dict = spec.to_dict()
        pending = {task.remote(spec_dict, g, threads): g for g in groups}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                group = pending.pop(ready[0])
                try:
                    worker, results = ray.get(ready[0])
                except Exception as e:  # noqa: BLE001 - a task that failed for good; the others go on
                    msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                    log.error("features %d-%d failed: %s", group[0], group[-1], msg)
                    outcome.failed.append((group, msg))
                    continue
                from .sweep import _record

                _record(store, results, bar, outcome, f"ray:{worker}")
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
    finally:
        if started:
            ray.shutdown()
