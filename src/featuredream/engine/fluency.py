"""Fluency limits: the ``xe_max`` forms and the ceiling per prompt length (the XE itself: :mod:`featuredream.models.xe`)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import torch

from ..saes.loading import FeatureStats
from .records import XeLimits

_PCT = re.compile(r"^p(\d{1,2}(?:\.\d+)?)$")
XE_MAX_VALID = "a number > 0, pNN with NN in 1..99 (that percentile of natural text's XE at each prompt's length), or none"


def parse_xe_max(value: object) -> float | str | None:
    """``xe_max`` as given (CLI text, number, 'pNN', None/'none') -> float, 'pNN' or None; ValueError naming
    the value and the valid forms otherwise."""
    given = value
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "off")):
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        m = _PCT.match(text)
        if m:
            if not 1 <= float(m.group(1)) <= 99:
                raise ValueError(f"xe_max={value!r} is invalid: valid is {XE_MAX_VALID}")
            return text
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"xe_max={value!r} is invalid: valid is {XE_MAX_VALID}") from None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and value > 0)
    ):
        raise ValueError(f"xe_max={given!r} is invalid: valid is {XE_MAX_VALID}")
    return float(value)


class XeLimit:
    """The fluency ceiling a prompt of ``L`` tokens must meet: a fixed number, or a percentile of natural
    text's XE at length ``L`` (natural text's XE falls with length, so one number is strict for short
    prompts and lax for long ones)."""

    def __init__(self, spec: float | str, by_length: torch.Tensor | None = None):
        self.spec, self.by_length = spec, by_length  # by_length[L]: the ceiling at L tokens (float64)

    def at(self, length: int) -> float:
        if self.by_length is None:
            return float(self.spec)
        return float(self.by_length[min(length, len(self.by_length) - 1)])

    def of(self, lengths: list[int]) -> torch.Tensor:
        """Ceilings ``[n]`` (float64) for prompts of these lengths."""
        return torch.tensor([self.at(n) for n in lengths], dtype=torch.float64)

    def describe(self, lo: int, hi: int) -> XeLimits:
        """The record of this ceiling: the spec and its value at each length ``lo..hi``."""
        return XeLimits(self.spec, {n: round(self.at(n), 4) for n in range(lo, hi + 1)})


def resolve_xe_limit(
    spec: float | str | None, objective, max_tokens: int, model_table: Callable[[], dict] | None = None
) -> XeLimit | None:
    """The :class:`XeLimit` of a config's ``xe_max`` for one objective. A 'pNN' reads the XE table in the
    statistics of the objective's SAE, else the model's own table on the prose reference (``model_table()``,
    see :func:`featuredream.text.xe_table.reference_xe_table`); both are the same table for statistics made
    with the default ``xe_reference``."""
    spec = parse_xe_max(spec)
    if spec is None:
        return None
    if isinstance(spec, float):
        return XeLimit(spec)
    stats = getattr(getattr(objective, "sae", None), "stats", None)
    if stats is None or not stats.has_xe_table():
        if model_table is None:
            raise ValueError(
                f"xe_max={spec!r} needs a natural-text XE table (an SAE's statistics or the model's): valid "
                "here are a number > 0 or none"
            )
        stats = FeatureStats(model_table(), {})
    lengths = torch.arange(max_tokens + 1)
    return XeLimit(spec, stats.xe_quantile(float(spec[1:]), lengths))
