"""``DreamResult``: everything a caller needs from a dream, with a JSON round trip and atomic writes."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..text.judge import JudgeScore
from .config import DreamConfig
from .records import (
    Dream,
    Environment,
    FeatureError,
    FrontierPoint,
    HistoryRow,
    Prompt,
    Rung,
    SetupStep,
    Verification,
    XeLimits,
    judge_of,
)

__all__ = [
    "Dream",
    "DreamResult",
    "Environment",
    "FeatureError",
    "FrontierPoint",
    "HistoryRow",
    "Prompt",
    "Rung",
    "SetupStep",
    "Verification",
    "XeLimits",
    "register_html_view",
    "write_atomic",
]

_HTML_VIEW: list[Callable[[Any], str]] = []
"""The notebook view of a :class:`DreamResult`, registered from above (the engine does not import the
observation package): :func:`register_html_view`."""


def register_html_view(view: Callable[[Any], str]) -> None:
    """Make ``view(result) -> HTML`` the notebook view of every :class:`DreamResult`."""
    _HTML_VIEW[:] = [view]


@dataclass
class DreamResult:
    """The outcome of :func:`featuredream.dream`.

    ``best`` is re-scored from its decoded string by the reference path (``verification`` holds the
    fast-path value and the difference). ``history`` has one row per iteration; ``frontier`` the
    activation-vs-XE Pareto set of everything evaluated (when XE was computed).
    """

    best: Prompt
    buffer: list[Prompt]
    history: list[HistoryRow]
    frontier: list[FrontierPoint]
    config: DreamConfig
    objective: str
    model: str
    sae: str | None
    feature: int | None
    seed: int
    wall_time: float
    """Seconds of the search (start pool to last iteration; a group's time divided among its features).
    The verification's own time is ``verification.seconds``."""
    start: str
    feasible: bool
    interrupted: bool = False
    stop_reason: str = ""
    n_evaluated: int = 0
    n_nonfinite: int = 0
    n_dropped_retokenization: int = 0
    n_capped_positions: int = 0
    dataset_max: float | None = None
    """The feature's corpus maximum (the ratio's denominator)."""
    dataset: str | None = None
    """Where ``dataset_max`` and the dataset starts come from: the SAE's statistics or a corpus scan."""
    site: str | None = None
    """The site(s) the objective reads, e.g. ``blocks.18.attn.hook_q[head 6]``."""
    xe_limit: float | None = None
    """The XE ceiling the best prompt had to meet at its own length (None: no ceiling)."""
    xe_limits: XeLimits | None = None
    """The ceiling used: as given and at each length."""
    ladder: list[Rung] = field(default_factory=list)
    """The fluency ladder (``DreamConfig.ladder``): the most activating prompt at each ceiling."""
    judge: JudgeScore | None = None
    """The fluency judge's view of ``best``."""
    verification: Verification | None = None
    environment: Environment | None = None
    setup: list[SetupStep] = field(default_factory=list)
    """One-time costs before the search (outside ``time_budget``): building a site's activation store,
    measuring its norm cap, the model's XE table; only those that took a noticeable time."""
    norm_cap: float | None = None
    """The norm guard's cap at the objective's site (positions above it are never scored; None: no guard)."""
    headline: str = "most activating"
    """What ``best`` is: ``readable`` (the most readable prompt whose activation reaches ``floor``) or
    ``most activating`` (under the ceiling: ``goal='max'``, no floor, or nothing reached it)."""
    floor: float | None = None
    """The readable goal's floor as an activation (None: no floor was set)."""
    most_activating: Prompt | None = None
    """The most activating prompt under the ceiling (``best`` itself when the headline is that)."""
    dreams: list[Dream] = field(default_factory=list)
    """``DreamConfig.dreams`` distinct dreams, the headline's kind first (see :mod:`.headline`)."""

    @property
    def ratio(self) -> float | None:
        """Dreamed activation / the feature's dataset maximum (None without statistics)."""
        if self.dataset_max is None or self.dataset_max <= 0:
            return None
        return self.best.activation / self.dataset_max

    def ratio_of(self, prompt: Prompt) -> float | None:
        """``prompt``'s activation / the dataset maximum (None without one)."""
        if self.dataset_max is None or self.dataset_max <= 0:
            return None
        return prompt.activation / self.dataset_max

    def _repr_html_(self) -> str | None:
        """Jupyter's inline view (:mod:`featuredream.observe.result_view`): the prompt's tokens coloured by
        activation, ratio, XE, judge, trajectory and ladder; None (plain repr) when no view is registered."""
        return _HTML_VIEW[0](self) if _HTML_VIEW else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio"] = self.ratio
        for rung, r in zip(d["ladder"], self.ladder):
            rung["ratio"] = self.ratio_of(r.prompt)
        for rec, dr in zip(d["dreams"], self.dreams):
            rec["ratio"] = self.ratio_of(dr.prompt)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DreamResult:
        """A result from its JSON form (:meth:`to_dict`), also as older versions wrote it."""
        d = {k: v for k, v in d.items() if k in {f.name for f in fields(cls)}}
        d["best"] = Prompt.from_dict(d["best"])
        d["buffer"] = [Prompt.from_dict(p) for p in d["buffer"]]
        d["history"] = [HistoryRow.from_dict(h) for h in d["history"]]
        d["frontier"] = [FrontierPoint.from_dict(p) for p in d["frontier"]]
        d["config"] = config_of(d["config"])
        d["ladder"] = [Rung.from_dict(r) for r in d.get("ladder", [])]
        d["judge"] = judge_of(d.get("judge"))
        d["setup"] = [SetupStep(**s) for s in d.get("setup", [])]
        d["dreams"] = [Dream.from_dict(x) for x in d.get("dreams", [])]
        for name, rec in (
            ("most_activating", Prompt),
            ("verification", Verification),
            ("xe_limits", XeLimits),
        ):
            d[name] = rec.from_dict(d[name]) if d.get(name) else None
        d["environment"] = Environment.from_dict(d["environment"]) if d.get("environment") else None
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=True)

    @classmethod
    def from_json(cls, text: str) -> DreamResult:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> Path:
        return write_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> DreamResult:
        return cls.from_json(Path(path).read_text())


def config_of(d: dict[str, Any]) -> DreamConfig:
    """A result's :class:`DreamConfig` from its JSON form; fields it does not know are dropped, and a result
    written before the readable goal existed (no ``goal``) was the most activating prompt (``goal='max'``)."""
    d = {k: v for k, v in d.items() if k in set(DreamConfig.names())}
    if "goal" not in d:
        d = {**d, "goal": "max", "floor": None}
    return DreamConfig(**d)


def write_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temp file beside ``path`` and rename it over ``path`` (never half a file)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
