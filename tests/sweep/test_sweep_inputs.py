"""Sweeps at their boundary: a bad option never locks a store, the fingerprint follows the hardware, paths
reach workers absolute, the summary never writes, Ray's task sizes, and ``dream --features`` keeps every
finished group's files through Ctrl-C."""

# ruff: noqa: F811 - sweep_dirs is test_sweep's fixture, imported and then requested by name

import importlib
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import replace

import pytest
import torch
from helpers.sweep import FAST_ARGS, cli, sweep_spec

import featuredream.engine.loop as loop
from featuredream.engine.results import FeatureError
from featuredream.sweep import (
    STORE_FILE,
    SweepSpec,
    SweepStore,
    count_features,
    parse_features,
    resolve_runtime,
    run_sweep,
)
from featuredream.sweep.ray_backend import task_cpus
from featuredream.sweep.store import SweepRow
from featuredream.sweep.summary import SweepSummary

# the module, not the function featuredream.engine exports under the same name
front = importlib.import_module("featuredream.engine.dream")


def _sweep_args(d, out, *extra):
    return ["sweep", "--model", d["model"], "--sae", d["sae"], "--out", str(out), *FAST_ARGS, *extra]


# ------------------------------------------------------------------------------ bad options never lock


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--reduce", "maximum"], "unknown reduction 'maximum': valid are"),
        (["--dtype", "float64"], "unknown dtype 'float64': valid are"),
        (["--device", "tpu"], "unknown device 'tpu': valid are"),
        (["--dtype", "float16"], "dtype 'float16' is not supported on cpu"),
        (["--device", "cuda"], "device 'cuda' is not available on this machine"),
        (["--model", "EMPTY"], "has no config.json: valid is a transformers model directory"),
    ],
)
def test_bad_option_fails_before_the_store_exists(sweep_dirs, tmp_path, capsys, extra, match):
    if "cuda" in extra and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    (tmp_path / "EMPTY").mkdir()
    extra = [str(tmp_path / "EMPTY") if a == "EMPTY" else a for a in extra]
    out = tmp_path / "s"
    code, _, err = cli(capsys, *_sweep_args(sweep_dirs, out, "--features", "0-1", *extra))
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1, err
    assert not (out / STORE_FILE).exists()


def test_corrected_rerun_after_a_bad_option(sweep_dirs, tmp_path, capsys):
    out = tmp_path / "s"
    code, _, _ = cli(capsys, *_sweep_args(sweep_dirs, out, "--features", "0-1", "--reduce", "maximum"))
    assert code == 2
    code, text, err = cli(capsys, *_sweep_args(sweep_dirs, out, "--features", "0-1", "--reduce", "max"))
    assert code == 0 and "2 written now" in text, err
    assert SweepStore.read(out).meta("fingerprint")["reduce"] == "max"


def test_store_without_records_takes_the_new_fingerprint(sweep_dirs, tmp_path, caplog):
    """A run that died before its first group (e.g. the model failed to load) must not lock the store."""
    out = tmp_path / "s"
    first = SweepStore.open(out, sweep_spec(sweep_dirs))
    with caplog.at_level("WARNING", logger="featuredream.sweep.store"):
        store = SweepStore.open(out, sweep_spec(sweep_dirs, xe_max=5.0))
    with pytest.raises(ValueError, match="another run replaced this store's configuration"):
        first.put([(0, FeatureError(0, "x"))])  # a run still going under the old one writes nothing
    first.close()
    assert "holds no record yet: replacing its configuration (config.xe_max=None -> 5.0)" in caplog.text
    assert store.meta("fingerprint")["config"]["xe_max"] == 5.0
    assert store.spec().config.xe_max == 5.0
    store.put([(1, FeatureError(1, "x"))])
    store.close()
    with pytest.raises(ValueError, match="config.xe_max=5.0, this run has config.xe_max=None: refusing"):
        SweepStore.open(out, sweep_spec(sweep_dirs), resume=True)


# ------------------------------------------------------------------------------ fingerprint and hardware


def test_fingerprint_follows_the_hardware(sweep_dirs, tmp_path, monkeypatch):
    """The default dtype and n_children differ between CPU and GPU: a CPU store is refused on a GPU (faked
    here: torch.cuda says it is available; nothing runs on CUDA)."""
    d = sweep_spec(sweep_dirs)
    spec = SweepSpec(model=d.model, sae=d.sae, config=replace(d.config, n_children=None), group_size=2)
    pinned = replace(spec, dtype="float32", config=replace(spec.config, n_children=32))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_runtime(spec) == {"dtype": "float32", "attention": "sdpa", "n_children": 64}
    for name, s in (("default", spec), ("pinned", pinned)):
        store = SweepStore.open(tmp_path / name, s)
        assert store.meta("fingerprint")["config"]["n_children"] == (64 if name == "default" else 32)
        store.put([(0, FeatureError(0, "x"))])
        store.close()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    rt = resolve_runtime(spec)
    assert (rt["dtype"], rt["n_children"]) == ("bfloat16", 128)
    with pytest.raises(
        ValueError, match=r"this run has (config\.n_children=128|attention=).*refusing to mix"
    ):
        SweepStore.open(tmp_path / "default", spec, resume=True)
    # pinned dtype and n_children resolve alike on both: that store may be resumed on the GPU
    SweepStore.open(tmp_path / "pinned", pinned, resume=True).close()


def test_old_schema_store_is_refused_in_one_line(sweep_dirs, tmp_path):
    out = tmp_path / "s"
    store = SweepStore.open(out, sweep_spec(sweep_dirs))
    assert store.meta("fingerprint")["schema"] == 2
    store.put([(0, FeatureError(0, "x"))])
    with store.conn:
        store.conn.execute("UPDATE meta SET value = '{\"schema\": 1}' WHERE key = 'fingerprint'")
    store.close()
    with pytest.raises(ValueError, match=r"store schema 1 \(an older featuredream\).*valid is a new --out"):
        SweepStore.open(out, sweep_spec(sweep_dirs), resume=True)


# ------------------------------------------------------------------------------ paths and Ray wiring


def test_relative_paths_are_stored_absolute(sweep_dirs, tmp_path, monkeypatch):
    monkeypatch.chdir(sweep_dirs["root"])
    d = sweep_spec(sweep_dirs)
    rel = replace(d, model=os.path.relpath(d.model), sae=os.path.relpath(d.sae))
    assert not os.path.isabs(rel.model) and rel.resolved().model == os.path.abspath(d.model)
    out = tmp_path / "s"
    run_sweep(rel, [0], out, progress=False)
    monkeypatch.chdir(tmp_path)
    stored = SweepStore.read(out).spec()
    assert (stored.model, stored.sae) == (os.path.abspath(d.model), os.path.abspath(d.sae))
    SweepStore.open(out, d, resume=True).close()  # same fingerprint from the absolute spelling


def test_ray_tasks_get_absolute_paths_and_the_probed_runtime(sweep_dirs, tmp_path, monkeypatch):
    """Without Ray: the backend is faked to see what run_sweep hands it and what the store records."""
    import featuredream.sweep.ray_backend as sweep_ray

    seen = {}

    class FakeRun:
        runtime = {"dtype": "bfloat16", "attention": "sdpa", "n_children": 8}  # as if probed on a GPU

        def __call__(self, spec, groups, store, bar, outcome):
            seen["spec"], seen["groups"] = spec, groups

    @contextmanager
    def fake_backend(spec, **kw):
        seen["backend_spec"], seen["kw"] = spec, kw
        yield FakeRun()

    monkeypatch.setattr(sweep_ray, "import_ray", lambda: None)
    monkeypatch.setattr(sweep_ray, "ray_backend", fake_backend)
    monkeypatch.chdir(sweep_dirs["root"])
    d = sweep_spec(sweep_dirs)
    rel = replace(d, model=os.path.relpath(d.model), sae=os.path.relpath(d.sae))
    run_sweep(rel, [0, 1, 2], tmp_path / "s", backend="ray", cpus_per_task=3, progress=False)
    for key in ("spec", "backend_spec"):
        assert (seen[key].model, seen[key].sae) == (os.path.abspath(d.model), os.path.abspath(d.sae))
    assert seen["groups"] == [[0, 1], [2]] and seen["kw"]["cpus_per_task"] == 3
    assert SweepStore.read(tmp_path / "s").meta("fingerprint")["dtype"] == "bfloat16"


def test_task_cpus():
    assert task_cpus([2.0], None, False) == 1  # the 2-CPU test cluster: two tasks
    assert task_cpus([64.0], None, False) == 16  # four model copies per node, not 64
    assert task_cpus([64.0, 16.0], None, False) == 4  # sized for the smallest node
    assert task_cpus([64.0], None, True) == 1
    assert task_cpus([64.0, 8.0], 12, False) == 12
    with pytest.raises(ValueError, match="cpus_per_task=65 is more than any Ray node has: valid are 1..64"):
        task_cpus([64.0, 8.0], 65, False)
    with pytest.raises(ValueError, match="cpus_per_task=0 is invalid"):
        task_cpus([8.0], 0, False)
    with pytest.raises(ValueError, match="no node with CPUs"):
        task_cpus([0.0], None, False)


def test_cli_cpus_per_task(sweep_dirs, tmp_path, capsys, monkeypatch):
    import featuredream.sweep.run as run
    from featuredream.sweep import SweepOutcome

    got = {}

    def fake(spec, features, out, **kw):
        got.update(kw)
        return SweepOutcome(len(features), 0, len(features), 0)

    monkeypatch.setattr(run, "run_sweep", fake)
    code, _, _ = cli(capsys, *_sweep_args(sweep_dirs, tmp_path / "s", "--features", "0-3",
                                           "--backend", "ray", "--cpus-per-task", "3"))  # fmt: skip
    assert code == 0 and (got["backend"], got["cpus_per_task"]) == ("ray", 3)
    code, _, err = cli(
        capsys, *_sweep_args(sweep_dirs, tmp_path / "s", "--features", "0", "--cpus-per-task", "0")
    )
    assert code == 2 and "valid is an integer >= 1" in err
    with pytest.raises(ValueError, match="cpus_per_task=2 applies to the ray backend only"):
        run_sweep(sweep_spec(sweep_dirs), [0], tmp_path / "t", cpus_per_task=2)


# ------------------------------------------------------------------------------ ranges, summary, store


def test_huge_feature_range_fails_fast(sweep_dirs, tmp_path, capsys):
    t0 = time.time()
    code, _, err = cli(capsys, *_sweep_args(sweep_dirs, tmp_path / "s", "--features", "0-1638400000"))
    assert code == 2 and "feature 1638400000 ('0-1638400000') is out of range: valid are 0..127" in err
    code, _, err = cli(capsys, "dream", "--features", "0-1638400000", "--out", str(tmp_path / "d"),
                        "--model", sweep_dirs["model"], "--sae", sweep_dirs["sae"], *FAST_ARGS)  # fmt: skip
    assert code == 2 and "names 1638400001 features: valid is at most" in err
    assert time.time() - t0 < 30 and not (tmp_path / "s").exists()
    assert count_features("0-9,20") == 11 and count_features("0-1638400000", 1 << 31) == 1638400001
    with pytest.raises(ValueError, match="valid is at most"):
        parse_features("0-1638400000")


def test_summary_opens_read_only(sweep_dirs, tmp_path, capsys):
    """sweep-summary on another program's SQLite file: refused in one line, the file left byte for byte."""
    d = tmp_path / "x"
    d.mkdir()
    con = sqlite3.connect(str(d / STORE_FILE))
    con.execute("CREATE TABLE notes (a)")
    con.commit()
    con.close()
    before = (d / STORE_FILE).read_bytes()
    code, _, err = cli(capsys, "sweep-summary", str(d))
    assert code == 2 and "is not a featuredream sweep store" in err and len(err.strip().splitlines()) == 1
    assert (d / STORE_FILE).read_bytes() == before
    with pytest.raises(ValueError, match="is not a featuredream sweep store"):
        SweepStore.read(d)


def test_connections_are_closed_on_errors(sweep_dirs, tmp_path, monkeypatch):
    made = []

    class Tracked(sqlite3.Connection):
        closed = False

        def close(self):
            self.closed = True
            super().close()

    real = sqlite3.connect

    def connect(*a, **k):
        made.append(real(*a, factory=Tracked, **k))
        return made[-1]

    monkeypatch.setattr(sqlite3, "connect", connect)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / STORE_FILE).write_text("not a database" * 100)
    with pytest.raises(ValueError, match="is not a featuredream sweep store"):
        SweepStore.open(tmp_path / "junk", sweep_spec(sweep_dirs))
    with pytest.raises(ValueError, match="is not a featuredream sweep store"):
        SweepStore.read(tmp_path / "junk")
    (tmp_path / "other").mkdir()
    real(str(tmp_path / "other" / STORE_FILE)).execute("CREATE TABLE meta (key, value)").connection.close()
    with pytest.raises(ValueError, match="no fingerprint"):
        SweepStore.read(tmp_path / "other")
    assert len(made) == 3 and all(c.closed for c in made)


def test_worst_ranks_infeasible_first():
    """Doc and code agree: an infeasible dream ranks before every feasible one, whatever its ratio."""

    def row(feature, ratio, feasible):
        return SweepRow(feature, "ok", 1.0, 5.0, 1.0, ratio, feasible, "text", None, 1.0)

    rows = [row(1, -0.5, True), row(2, 3.0, False), row(3, 0.2, True)]
    assert [r.feature for r in SweepSummary(rows, {}).worst(3)] == [2, 1, 3]
    assert "rank first" in SweepSummary.worst.__doc__


# ------------------------------------------------------------------------------ dream --features


def _dream_args(d, out, *extra):
    return ["dream", "--features", "3,17,20", "--group-size", "2", "--out", str(out), "--model", d["model"],
            "--sae", d["sae"], *FAST_ARGS, *extra]  # fmt: skip


def test_dream_features_ctrl_c_between_groups_keeps_finished_files(sweep_dirs, tmp_path, capsys, monkeypatch):
    real, calls = front.dream_many, []

    def second_raises(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(front, "dream_many", second_raises)
    out = tmp_path / "many"
    code, text, err = cli(capsys, *_dream_args(sweep_dirs, out))
    assert code == 130 and sorted(p.name for p in out.iterdir()) == ["feature_17.json", "feature_3.json"]
    assert "wrote 2 results" in text and "1 of 3 features not dreamed" in err


def test_dream_features_ctrl_c_in_a_group_stops_after_it(sweep_dirs, tmp_path, capsys, monkeypatch):
    real_many, real_sig, groups, sigs = front.dream_many, loop.batched_parent_signals, [], []

    def counting(model, tok, obj, *a, **k):
        groups.append(list(obj.latents))
        return real_many(model, tok, obj, *a, **k)

    def interrupting(*a, **k):
        sigs.append(1)
        if len(sigs) == 2:  # group 1, second iteration
            raise KeyboardInterrupt
        return real_sig(*a, **k)

    monkeypatch.setattr(front, "dream_many", counting)
    monkeypatch.setattr(loop, "batched_parent_signals", interrupting)
    out = tmp_path / "many"
    code, text, _ = cli(capsys, *_dream_args(sweep_dirs, out))
    assert code == 130 and groups == [[3, 17]] and "wrote 2 results" in text
    assert sorted(p.name for p in out.iterdir()) == ["feature_17.json", "feature_3.json"]
    assert '"interrupted": true' in (out / "feature_3.json").read_text()


def test_dream_features_counts_only_written_results(sweep_dirs, tmp_path, capsys, monkeypatch):
    real = front.dream_many

    def first_fails(model, tok, obj, *a, **k):
        res = real(model, tok, obj, *a, **k)
        return [FeatureError(obj.latents[0], "no start")] + res[1:]

    monkeypatch.setattr(front, "dream_many", first_fails)
    out = tmp_path / "many"
    code, text, _ = cli(capsys, *_dream_args(sweep_dirs, out))
    assert code == 0 and "3 failed: no start" in text and "20 failed: no start" in text
    assert f"wrote 1 results in {out}; 2 features failed" in text
    assert sorted(p.name for p in out.iterdir()) == ["feature_17.json"]
