"""The Ray backend on a local 2-CPU cluster: a worker killed (SIGKILL) mid-task, the sweep still completes
with every feature exactly once, and the records equal the local backend's."""

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from helpers.sweep import records, same_records, sweep_spec

from featuredream.sweep import run_sweep

ray = pytest.importorskip("ray")


def _task_pids() -> list[int]:
    """Worker processes running a sweep task now (Ray titles them ``ray::_dream_group``)."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if (p / "cmdline").read_bytes().startswith(b"ray::_dream_group"):
                    pids.append(int(p.name))
            except OSError:
                pass
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds Ray's worker processes through /proc")
def test_ray_backend_survives_a_killed_worker_and_matches_local(sweep_dirs, tmp_path):  # noqa: F811
    features = list(range(6))  # group size 2: three tasks on two workers
    local = tmp_path / "local"
    run_sweep(sweep_spec(sweep_dirs), features, local, progress=False)
    killed: list[int] = []
    stop = threading.Event()

    def kill_first_task():
        while not stop.is_set():
            pids = _task_pids()
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_first_task, daemon=True)
    killer.start()
    try:
        o = run_sweep(
            sweep_spec(sweep_dirs), features, tmp_path / "ray", backend="ray", workers=2, progress=False
        )
    finally:
        stop.set()
        killer.join(5)
    assert killed, "no sweep task was seen running"
    assert o.failed == [] and (o.written, o.skipped, o.errors) == (6, 0, 0)
    rows = records(tmp_path / "ray")
    assert [r[0] for r in rows] == features  # every feature exactly once
    same_records(rows, records(local))
    import sqlite3

    con = sqlite3.connect(str(tmp_path / "ray" / "sweep.sqlite"))
    workers = {w for (w,) in con.execute("SELECT worker FROM results")}
    con.close()
    assert all(w.startswith("ray:") for w in workers) and killed[0] not in {
        int(w.rsplit(":", 1)[1]) for w in workers
    }
    assert not ray.is_initialized()  # the cluster the sweep started is shut down
