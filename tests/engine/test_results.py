"""The result's JSON edge: typed records in, the same JSON out, and a file written by an older featuredream
(4534acc, before typed records and the readable goal) still loads, read by attribute."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from featuredream.engine.config import DreamConfig
from featuredream.engine.records import Environment, FrontierPoint, HistoryRow, Verification, XeLimits
from featuredream.engine.results import DreamResult
from featuredream.text.judge import JudgeScore

OLD = Path(__file__).parents[1] / "data" / "dream_result_4534acc.json"


def test_a_result_file_of_the_previous_version_loads_as_typed_records():
    r = DreamResult.load(OLD)
    raw = json.loads(OLD.read_text())
    assert isinstance(r.config, DreamConfig) and r.config.goal == "max" and r.config.floor is None
    assert r.config.xe_max == 9.0 and r.config.ladder == ("p50", None) and r.config.pareto == (0.5, 2.0)
    assert all(isinstance(h, HistoryRow) for h in r.history) and len(r.history) == len(raw["history"])
    assert r.history[0].operator == raw["history"][0]["operator"]
    assert (
        all(isinstance(p, FrontierPoint) for p in r.frontier)
        and r.frontier[0].text == raw["frontier"][0]["text"]
    )
    assert (
        isinstance(r.verification, Verification)
        and r.verification.abs_error == raw["verification"]["abs_error"]
    )
    assert isinstance(r.xe_limits, XeLimits) and r.xe_limits.by_length[3] == 9.0
    assert isinstance(r.environment, Environment) and r.environment.multi is None
    assert isinstance(r.judge, JudgeScore) and r.judge.percentile == 71.5
    assert all(isinstance(g.judge, JudgeScore) for g in r.ladder)
    assert r.headline == "most activating" and r.dreams == [] and r.most_activating is None
    assert r.ratio == raw["ratio"]


def test_the_json_round_trip_keeps_every_record(tmp_path):
    r = DreamResult.load(OLD)
    path = r.save(tmp_path / "again.json")
    back = DreamResult.load(path)
    assert back == r
    d = json.loads(path.read_text())
    assert d["xe_limits"]["by_length"]["3"] == 9.0 and d["judge"]["percentile"] == 71.5
    assert d["config"]["goal"] == "max" and math.isclose(
        d["history"][0]["best_activation"], r.history[0].best_activation
    )


def test_a_config_field_this_version_does_not_know_is_dropped():
    raw = json.loads(OLD.read_text())
    raw["config"]["some_future_knob"] = 3
    raw["another_future_field"] = {"x": 1}
    r = DreamResult.from_dict(raw)
    assert not hasattr(r.config, "some_future_knob") and r.best.text == raw["best"]["text"]
    with pytest.raises(ValueError, match="iters"):
        DreamResult.from_dict({**raw, "config": {**raw["config"], "iters": 0}})  # validated like any config
