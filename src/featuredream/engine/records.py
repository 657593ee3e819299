"""The typed records a :class:`~.results.DreamResult` is made of, each with its JSON reader.

JSON is made and read at the edge only (``DreamResult.to_dict`` / ``from_dict``); everywhere else these are
read by attribute. Each ``from_dict`` also reads what featuredream wrote before these records existed (a
result file of 4534acc: ``tests/data/dream_result_4534acc.json``), so old results still load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from ..text.judge import JudgeScore


def _known(cls, d: dict[str, Any]) -> dict[str, Any]:
    """``d`` without the keys ``cls`` has no field for (derived values such as ``ratio``)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


def judge_of(d: dict[str, Any] | None) -> JudgeScore | None:
    return None if d is None else JudgeScore(**_known(JudgeScore, d))


@dataclass
class Prompt:
    """One prompt: ``text``, ``ids``, ``activation``, ``xe``, per-token strings and activations."""

    text: str
    ids: list[int]
    activation: float
    xe: float
    tokens: list[str] = field(default_factory=list)
    token_acts: list[float] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Prompt:
        return cls(**_known(cls, d))


@dataclass
class Rung:
    """One rung of a fluency ladder: the most activating prompt found under ``ceiling`` (re-scored from its
    text by the reference path, like the best prompt)."""

    ceiling: str
    """The ceiling as given: ``p50``, ``6.5`` or ``none``."""
    xe_limit: float | None
    """The ceiling at the prompt's own length (None: no ceiling)."""
    feasible: bool
    """The prompt meets the ceiling (False: nothing evaluated did; the least infeasible is shown)."""
    prompt: Prompt
    judge: JudgeScore | None = None
    """The fluency judge's view of the prompt."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Rung:
        d = _known(cls, d)
        return cls(**{**d, "prompt": Prompt.from_dict(d["prompt"]), "judge": judge_of(d.get("judge"))})


@dataclass
class Dream:
    """One of a result's distinct dreams (``DreamResult.dreams``), re-scored from its text like the best."""

    prompt: Prompt
    above_floor: bool
    """Its activation reaches the floor (False: a most activating prompt filling the list)."""
    xe_excess: float | None
    """XE minus natural prose's median XE at its length, under the dreaming model (None: not measured)."""
    peak: float
    """Its most surprising token's XE."""
    repeats: int
    """Repeated bigrams plus immediate token repeats."""
    peak_ok: bool | None
    """No token more surprising than natural text's 95th percentile at its length (None: not measured)."""
    repeats_ok: bool | None
    """No more repetition than natural text's 95th percentile at its length (None: not measured)."""
    judge: JudgeScore | None = None
    """The fluency judge's view of the prompt."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Dream:
        d = _known(cls, d)
        return cls(**{**d, "prompt": Prompt.from_dict(d["prompt"]), "judge": judge_of(d.get("judge"))})


@dataclass(frozen=True)
class HistoryRow:
    """One iteration of one feature."""

    iter: int
    operator: str | None
    """The operator of the iteration's best child (None: no child was kept)."""
    child_activation: float | None
    child_xe: float | None
    best_activation: float
    best_xe: float
    best_loss: float
    best_feasible: bool
    best_tokens: int
    candidates: int
    """Fresh children evaluated."""
    seconds: float
    """This iteration's time, shared among the features that ran it."""
    elapsed: float
    """Seconds since the search began, at the end of this iteration."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HistoryRow:
        return cls(**_known(cls, d))


@dataclass(frozen=True)
class FrontierPoint:
    """A prompt on the activation-vs-XE Pareto frontier, re-scored from its text."""

    activation: float
    xe: float
    text: str

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FrontierPoint:
        return cls(**_known(cls, d))


@dataclass(frozen=True)
class Verification:
    """The fast path's activation and XE of the reported prompt against the reference path's."""

    fast_activation: float
    fast_xe: float
    """NaN when the run computed no XE."""
    abs_error: float
    """|fast - reference| activation."""
    tolerance: float
    """Above it a warning is logged (looser in low precision)."""
    seconds: float = math.nan
    """The verification's own time (re-scoring every candidate and the frontier)."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verification:
        return cls(**_known(cls, d))


@dataclass(frozen=True)
class XeLimits:
    """The fluency ceiling a run used: as given (``6.5`` or ``p90``) and its value at each length."""

    spec: float | str
    by_length: dict[int, float]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> XeLimits:
        return cls(d["spec"], {int(n): float(v) for n, v in d["by_length"].items()})


@dataclass(frozen=True)
class MultiRun:
    """A group run's undivided figures (K features dreamed together)."""

    features: int
    group_wall_time: float
    loop_seconds: float
    cached_tokens: int


@dataclass(frozen=True)
class Environment:
    """Where a result was computed."""

    torch: str
    python: str
    device: str
    dtype: str
    featuredream: str
    multi: MultiRun | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Environment:
        d = _known(
            cls, {k: d.get(k, "unknown") for k in ("torch", "python", "device", "dtype", "featuredream")} | d
        )
        multi = d.get("multi")
        return cls(**{**d, "multi": MultiRun(**_known(MultiRun, multi)) if multi else None})


@dataclass
class SetupStep:
    """A one-time cost paid before the time budget's clock started (cached for later runs)."""

    what: str
    """E.g. ``activation store of blocks.12.hook_resid_post built (32768 tokens)``."""
    seconds: float


@dataclass
class FeatureError:
    """A feature of a group that could not be dreamed (e.g. every start prompt scored non-finite)."""

    feature: int | None
    message: str
