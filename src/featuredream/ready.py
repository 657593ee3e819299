"""Ready points: a handshake that lets a supervisor (a test, a job runner) act at a known moment of a run.

With the environment variable ``FEATUREDREAM_READY_FILE=PATH`` set, a process that reaches a ready point
writes ``PATH`` (atomically; its text is the point's name) and then waits until ``PATH`` is removed (at
most ``HOLD_SECONDS``, then it goes on); without the variable a ready point does nothing. The points:

- ``sweep-group-written``: a sweep has committed one group's records to its store (after every group);
- ``dream-started``: ``featuredream dream`` has loaded the model and SAE and installed its Ctrl-C handler;
  the dream starts when the file is removed.

The supervisor's side is :func:`wait_for`. The tests use the pair to SIGKILL a sweep right after a commit,
or to press Ctrl-C during a dream, at a moment the process holds still, instead of polling its output
against a deadline (which a loaded machine can miss either way).

This module imports nothing of the package, so every layer may pass a ready point.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

__all__ = ["ENV", "HOLD_SECONDS", "reached", "wait_for"]

ENV = "FEATUREDREAM_READY_FILE"
HOLD_SECONDS = 600.0
"""Longest a process waits at a ready point for its file to be removed."""
_POLL = 0.01


def reached(point: str) -> None:
    """Pass the ready point ``point``: with ``FEATUREDREAM_READY_FILE`` set, write the file and wait until
    it is removed (see module doc); otherwise return at once."""
    path = os.environ.get(ENV)
    if not path:
        return
    p = Path(path)
    tmp = p.with_name(p.name + f".{os.getpid()}.tmp")
    tmp.write_text(point)
    os.replace(tmp, p)  # the supervisor never reads a half-written name
    deadline = time.monotonic() + HOLD_SECONDS
    while p.exists() and time.monotonic() < deadline:
        time.sleep(_POLL)


def wait_for(path: str | Path, process: subprocess.Popen | None = None, timeout: float = HOLD_SECONDS) -> str:
    """The supervisor's side: wait until ``path`` exists and return the ready point named in it.

    RuntimeError when ``process`` ends first or ``timeout`` seconds pass (a safety net: the process holds
    at the point, so the moment does not depend on how fast either side runs). Remove ``path`` to let the
    process go on.
    """
    p = Path(path)
    deadline = time.monotonic() + timeout
    while not p.exists():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the process ended (exit {process.returncode}) before a ready point")
        if time.monotonic() >= deadline:
            raise RuntimeError(f"no ready point within {timeout:g} s ({p} was never written)")
        time.sleep(_POLL)
    return p.read_text()
