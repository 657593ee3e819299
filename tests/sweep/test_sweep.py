"""Sweeps: feature ranges, the durable store (fingerprint, idempotent writes), resume after a kill at any
moment (a real SIGKILL of a running sweep and one inside an open transaction), the summary and the CLI."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from helpers.saes import identity_sae_dir
from helpers.sweep import FAST_ARGS, cli, records, same_records, sweep_spec

from featuredream import ready
from featuredream.engine.results import FeatureError
from featuredream.sweep import STORE_FILE, SweepSpec, SweepStore, parse_features, run_sweep
from featuredream.sweep.summary import format_summary, summarize, write_cards, write_index


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here on one thread (conftest.one_thread)."""


# ---------------------------------------------------------------------------------------------- ranges


def test_parse_features():
    assert parse_features("3,17,42") == [3, 17, 42]
    assert parse_features("0-3") == [0, 1, 2, 3]
    assert parse_features("20-21, 5 ,0-1", 30) == [0, 1, 5, 20, 21]
    assert parse_features("7") == [7]


@pytest.mark.parametrize(
    "text,n,match",
    [
        ("0-10,5-20", None, r"feature ranges '0-10' and '5-20' overlap at 5"),
        ("3,3", None, "overlap at 3"),
        ("9-3", None, r"'9-3' is empty \(3 < 9\)"),
        ("", None, "empty feature list"),
        (" , ", None, "empty feature list"),
        ("1,x", None, "'x' is not N or A-B"),
        ("-3", None, "is not N or A-B"),
        ("0-2304", 2304, r"feature 2304 \('0-2304'\) is out of range: valid are 0..2303"),
    ],
)
def test_parse_features_bad_input(text, n, match):
    with pytest.raises(ValueError, match=match) as e:
        parse_features(text, n)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------- store


def test_store_is_idempotent_and_refuses_to_mix(sweep_dirs, tmp_path):
    out = tmp_path / "s"
    spec = sweep_spec(sweep_dirs)
    store = SweepStore.open(out, spec)
    assert store.put([(4, FeatureError(4, "no start"))]) == 1
    assert store.put([(4, FeatureError(4, "again")), (5, FeatureError(5, "x"))]) == 1  # 4 kept as it was
    assert store.done() == {4, 5} and [r.error for r in store.rows()] == ["no start", "x"]
    store.close()
    with pytest.raises(ValueError, match="already holds a sweep with 2 finished features: pass --resume"):
        SweepStore.open(out, spec)
    SweepStore.open(out, spec, resume=True).close()
    with pytest.raises(
        ValueError, match=r"config.xe_max=None, this run has config.xe_max=5.0: refusing to mix"
    ):
        SweepStore.open(out, sweep_spec(sweep_dirs, xe_max=5.0), resume=True)
    other = identity_sae_dir(tmp_path / "other", d_in=64)
    with pytest.raises(ValueError, match="holds a sweep with sae='dir:.*refusing to mix"):
        SweepStore.open(
            out, SweepSpec(model=spec.model, sae=str(other), device="cpu", config=spec.config), resume=True
        )
    with pytest.raises(
        ValueError, match="holds a sweep with objective='encoder', this run has objective='decoder'"
    ):
        SweepStore.open(
            out, SweepSpec(model=spec.model, sae=spec.sae, kind="decoder", config=spec.config), resume=True
        )
    # speed-only knobs (batch size, progress) may change between runs
    SweepStore.open(out, sweep_spec(sweep_dirs, batch_size=7, progress=True), resume=True).close()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / STORE_FILE).write_text("not a database" * 100)
    with pytest.raises(ValueError, match="is not a featuredream sweep store"):
        SweepStore.open(tmp_path / "junk", spec)


# ---------------------------------------------------------------------------------------------- resume


def test_sweep_resume_after_sigkill_loses_and_duplicates_nothing(sweep_dirs, tmp_path):
    """A real sweep process killed with SIGKILL mid-run, then resumed: every feature exactly once, and the
    records equal an uninterrupted sweep's (different grouping: equal up to float).

    The kill lands at a known moment whatever the machine's load: the sweep holds at its ready point right
    after committing its first group (``FEATUREDREAM_READY_FILE``, :mod:`featuredream.ready`), with its
    store open, until it is killed."""
    features = "0-5"
    ref = tmp_path / "ref"
    o = run_sweep(sweep_spec(sweep_dirs), parse_features(features), ref, progress=False)
    assert (o.requested, o.skipped, o.written, o.errors) == (6, 0, 6, 0)
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "featuredream.cli",
        "sweep",
        "--features",
        features,
        "--out",
        str(out),
        "--model",
        sweep_dirs["model"],
        "--sae",
        sweep_dirs["sae"],
        "--group-size",
        "1",
        "--xe-max",
        "none",
        "--ladder",
        "off",
        *FAST_ARGS,
    ]  # fmt: skip  (the library spec's xe_max and ladder are None; the CLI's defaults are p90 and a ladder)
    flag = tmp_path / "ready"
    env = {**os.environ, "OMP_NUM_THREADS": "1", ready.ENV: str(flag)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        try:
            point = ready.wait_for(flag, proc)  # a deadline only as a safety net: the sweep holds there
        except RuntimeError as e:
            raise AssertionError(f"{e}: {proc.stderr.read()[-500:]!r}") from None
        assert point == "sweep-group-written"
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = records(out)
    assert [r[0] for r in before] == [0]  # the first group (group size 1), nothing after it
    o = run_sweep(sweep_spec(sweep_dirs), parse_features(features), out, resume=True, progress=False)
    assert o.skipped == len(before) and o.written == 6 - len(before)
    after = records(out)
    assert [r[0] for r in after] == list(range(6))  # all, once (feature is the primary key)
    assert after[: len(before)] == before  # finished records untouched
    same_records(after, records(ref))
    # resuming a complete sweep does nothing
    assert (
        run_sweep(sweep_spec(sweep_dirs), parse_features(features), out, resume=True, progress=False).written
        == 0
    )


def test_kill_inside_a_transaction_leaves_no_trace(sweep_dirs, tmp_path):
    """SIGKILL after the INSERT and before the COMMIT: the next open rolls the half-write back."""
    out = tmp_path / "s"
    SweepStore.open(out, sweep_spec(sweep_dirs)).close()
    code = (
        "import os, signal, sqlite3, sys\n"
        "con = sqlite3.connect(sys.argv[1]); con.execute('PRAGMA synchronous=FULL')\n"
        "con.execute('BEGIN')\n"
        "con.execute(\"INSERT INTO results (feature, status, error) VALUES (1, 'error', 'half')\")\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(out / STORE_FILE)], capture_output=True)
    assert r.returncode == -signal.SIGKILL
    store = SweepStore.open(out, sweep_spec(sweep_dirs), resume=True)
    assert store.done() == set()
    store.close()
    o = run_sweep(sweep_spec(sweep_dirs), [1], out, resume=True, progress=False)
    assert o.written == 1 and [r[:2] for r in records(out)] == [(1, "ok")]


def test_ctrl_c_keeps_finished_groups_and_resume_completes(sweep_dirs, tmp_path, monkeypatch):
    import featuredream.engine.loop as multi

    real, calls = multi.batched_parent_signals, {"n": 0}

    def interrupting(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:  # group 2 (features 2, 3), its second iteration
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(multi, "batched_parent_signals", interrupting)
    out = tmp_path / "s"
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep_spec(sweep_dirs), [0, 1, 2, 3], out, progress=False)
    assert [r[0] for r in records(out)] == [0, 1]  # the interrupted group left nothing half-done
    monkeypatch.setattr(multi, "batched_parent_signals", real)
    o = run_sweep(sweep_spec(sweep_dirs), [0, 1, 2, 3], out, resume=True, progress=False)
    assert (o.skipped, o.written) == (2, 2) and [r[0] for r in records(out)] == [0, 1, 2, 3]


# ---------------------------------------------------------------------------------------------- summary


def test_summary_index_and_cards(sweep_dirs, tmp_path):
    out = tmp_path / "s"
    run_sweep(sweep_spec(sweep_dirs), [0, 1, 2, 70], out, progress=False)
    store = SweepStore.open(out, sweep_spec(sweep_dirs), resume=True)
    store.put([(9, FeatureError(9, "<script>alert(1)</script> no start"))])
    store.close()
    s = summarize(out)
    assert len(s.rows) == 5 and len(s.ok) == 4 and len(s.errors) == 1
    assert len(s.ratios) == 4 and all(r > -10 for r in s.ratios)
    assert s.beat_fraction == sum(r.ratio >= 1 and r.feasible for r in s.ok) / 4
    text = format_summary(s, 2)
    assert "beat the dataset maximum" in text and "worst 2 features" in text and "failed 9" in text
    worst = s.worst(1)[0].feature
    assert write_cards(out, [worst]) == [out / "cards" / f"feature_{worst}.html"]
    page = write_index(out, s).read_text()
    assert f'href="cards/feature_{worst}.html"' in page and page.count("href=") == 1
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert 'src="data:image/png;base64,' in page


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_sweep_resume_and_summary(sweep_dirs, tmp_path, capsys):
    out = tmp_path / "s"
    base = [
        "sweep",
        "--model",
        sweep_dirs["model"],
        "--sae",
        sweep_dirs["sae"],
        "--out",
        str(out),
        *FAST_ARGS,
    ]
    code, text, _ = cli(capsys, *base, "--features", "0-2")
    assert code == 0 and "3 features, 0 already done, 3 written now" in text
    code, _, err = cli(capsys, *base, "--features", "0-3")
    assert code == 2 and "pass --resume" in err and len(err.strip().splitlines()) == 1
    code, text, _ = cli(capsys, *base, "--features", "0-3", "--resume")
    assert code == 0 and "4 features, 3 already done, 1 written now" in text
    code, _, err = cli(capsys, *base, "--features", "0-3", "--resume", "--xe-max", "4")
    assert code == 2 and "refusing to mix" in err and "config.xe_max='p90'" in err  # the CLI default
    assert len(err.strip().splitlines()) == 1
    code, text, _ = cli(capsys, "sweep-summary", str(out), "--worst", "2")
    assert code == 0 and "4 stored, 4 dreamed" in text and (out / "index.html").exists()
    assert (out / "ratios.png").stat().st_size > 0


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--features", "0-10,5-20"], "overlap at 5"),
        (["--features", "4-2"], "is empty"),
        (["--features", "0-128"], r"feature 128 \('0-128'\) is out of range: valid are 0..127"),
        (["--features", "0", "--group-size", "0"], "valid is an integer >= 1"),
    ],
)
def test_cli_sweep_bad_input(sweep_dirs, tmp_path, capsys, extra, match):
    code, _, err = cli(
        capsys,
        "sweep",
        "--model",
        sweep_dirs["model"],
        "--sae",
        sweep_dirs["sae"],
        "--out",
        str(tmp_path / "o"),
        *extra,
    )
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert __import__("re").search(match, err), err


def test_cli_sweep_without_ray_installed(sweep_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # "import ray" now raises ImportError
    code, _, err = cli(
        capsys, "sweep", "--features", "0-3", "--out", str(tmp_path / "o"), "--backend", "ray",
        "--model", sweep_dirs["model"], "--sae", sweep_dirs["sae"],
    )  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--backend ray needs Ray, which is not installed: pip install 'featuredream[ray]'" in err
    assert not (tmp_path / "o").exists()  # refused before any work


def test_cli_summary_of_no_sweep(tmp_path, capsys):
    code, _, err = cli(capsys, "sweep-summary", str(tmp_path))
    assert code == 2 and "no sweep in" in err


def test_cli_dream_features(sweep_dirs, tmp_path, capsys):
    out = tmp_path / "many"
    code, text, _ = cli(
        capsys, "dream", "--features", "3,17", "--out", str(out), "--model", sweep_dirs["model"],
        "--sae", sweep_dirs["sae"], *FAST_ARGS,
    )  # fmt: skip
    assert code == 0 and "wrote 2 results" in text
    for f in (3, 17):
        rec = json.loads((out / f"feature_{f}.json").read_text())
        assert rec["feature"] == f and rec["environment"]["multi"]["features"] == 2
    code, _, err = cli(
        capsys, "dream", "--features", "3,3", "--out", str(out), "--model", sweep_dirs["model"],
        "--sae", sweep_dirs["sae"],
    )  # fmt: skip
    assert code == 2 and "overlap at 3" in err


def test_sweep_with_a_judge_summarizes_its_percentiles(sweep_dirs, tmp_path, monkeypatch):
    """A spec's judge scores each feature's dream; the store's rows, the printed and the inline summary
    show the percentiles (here the tiny model judges itself on a small reference)."""
    from featuredream.sweep.summary import summary_html
    from featuredream.text import prose

    monkeypatch.setenv("FEATUREDREAM_CACHE", str(tmp_path / "cache"))
    windows = torch.randint(3, 300, (30, 16), generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(prose, "prose_windows", lambda tok: windows)
    out = tmp_path / "j"
    spec = SweepSpec(**{**sweep_spec(sweep_dirs).__dict__, "judge": sweep_dirs["model"]})
    run_sweep(spec, [0, 1], out, progress=False)
    s = summarize(out)
    assert len(s.judge_pcts) == 2 and all(0 <= p <= 100 for p in s.judge_pcts)
    store = SweepStore.read(out)
    try:
        assert [r.judge_pct for r in store.rows()] == [store.result(f).judge.percentile for f in (0, 1)]
    finally:
        store.close()
    assert "judge percentile among natural prose: median" in format_summary(s)
    assert "(50 = typical prose)" in summary_html(s)
    plain = tmp_path / "p"
    run_sweep(sweep_spec(sweep_dirs), [0], plain, progress=False)
    assert summarize(plain).judge_pcts == [] and "n/a (no judge)" in summary_html(summarize(plain))
