"""Cooperative Ctrl-C for the dreaming loops.

Inside :func:`graceful_sigint` the first SIGINT does not raise: it asks the running loop to stop after
its current iteration (:func:`stop_requested`), so the loop returns its best prompt, verified, and the
CLI writes it. A second SIGINT raises ``KeyboardInterrupt`` at once (the loops catch that too). A flag
checked between iterations cannot be lost inside library code that happens to be running when the
signal arrives, which an exception raised at an arbitrary bytecode can.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

_requested = threading.Event()


def stop_requested() -> bool:
    """True once Ctrl-C was pressed inside :func:`graceful_sigint`."""
    return _requested.is_set()


@contextmanager
def graceful_sigint() -> Iterator[None]:
    """Install the two-stage SIGINT handler for the block (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if _requested.is_set():
            raise KeyboardInterrupt
        _requested.set()
        log.warning("interrupted: stopping after this iteration (Ctrl-C again to stop at once)")

    _requested.clear()
    old = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        _requested.clear()
