"""The time budget of a dream: one-time setup before it, the search's clock, and when to stop.

``time_budget`` bounds the search: the start pool, the iterations and the verification of the results. One-time
costs that later runs do not pay again (measuring a site's norm cap, building its activation store, the model's
XE table) come before the clock starts; each is recorded as a :class:`~.results.SetupStep` when it took a while,
so the CLI prints it on its own line. The loop stops when one more iteration (as long as the last) and the
verification (the measured cost of one reference re-score times the prompts to re-score) would overrun the
budget.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

from .results import SetupStep

log = logging.getLogger(__name__)

SETUP_SHOWN = 0.5
"""A one-time step that took at least this many seconds is recorded in the result (``setup``)."""


class Clock:
    """``setup`` steps, the search's start ``t0``, the last iteration's seconds and one re-score's cost."""

    def __init__(self, budget: float | None):
        self.budget = budget
        self.setup: list[SetupStep] = []
        self.t0 = time.time()
        self.last_dt = 0.0
        self.t_ref = 0.0

    @contextmanager
    def timed(self, what: str, always: bool = False):
        """Record the block as a setup step when it took at least :data:`SETUP_SHOWN` seconds (or ``always``)."""
        t = time.time()
        yield
        if always or time.time() - t >= SETUP_SHOWN:
            self.setup.append(SetupStep(what, time.time() - t))

    def start(self) -> None:
        """The search begins: the budget counts from here."""
        self.t0 = time.time()

    def elapsed(self) -> float:
        return time.time() - self.t0

    def out_of_time(self, n_verify: int) -> bool:
        """One more iteration and re-scoring ``n_verify`` prompts would overrun the budget."""
        if self.budget is None:
            return False
        return self.budget - self.elapsed() <= self.last_dt + self.t_ref * n_verify


def prepare_stores(model, tok, objectives, clock: Clock) -> None:
    """Build the activation store of every site the corpus scans of ``objectives`` will read and that is not
    cached yet (a one-time cost: ~50 s for a SmolLM2 residual site on a 2-core CPU), timed on ``clock``."""
    from ..text.activation_store import STORE_TOKENS, missing_sites, site_store

    sites = sorted({s for obj in objectives for s in obj.sites}, key=str)
    if not sites:
        return
    with clock.timed("default-corpus windows of the activation store"):
        missing = missing_sites(model, tok, sites)
    if missing:
        what = f"activation store of {', '.join(map(str, missing))} built ({STORE_TOKENS} tokens, cached)"
        log.info("%s: once per model and site", what)
        with clock.timed(what, always=True):
            site_store(model, tok, missing)
