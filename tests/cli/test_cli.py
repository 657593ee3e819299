"""The CLI on tiny models saved to disk: bad input gets one line on stderr and exit 2, no partial files."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers.cli import dream_args, run_cli


def test_cli_dream_writes_result(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "r.json"
    code, cap = run_cli(
        capsys, dream_args(tiny_dirs, out) + ["--feature", "3", "--objective", "decoder", "--reduce", "max"]
    )
    assert code == 0, cap.err
    res = json.loads(out.read_text())
    assert {"text", "activation", "xe"} <= set(res["best"]) and len(res["history"]) == 2
    assert "best prompt" in cap.out
    # the CLI's default ladder: p50 p75 p90 none, printed one row per rung
    assert [g["ceiling"] for g in res["ladder"]] == ["p50", "p75", "p90", "none"]
    assert cap.out.count("\n") >= 10 and "ladder      :" in cap.out
    assert "decoder" in res["objective"] and "reduce=max" in cap.out  # the options given are the ones used


def test_cli_judge_scores_the_dream(tiny_dirs, tmp_path, capsys, monkeypatch):
    """``--judge MODEL``: the reported prompt and each rung get the judge's percentile (here the tiny model
    judges itself on a small reference); ``--ladder off`` drops the ladder."""
    from featuredream.text import prose

    monkeypatch.setenv("FEATUREDREAM_CACHE", str(tmp_path / "cache"))
    g = __import__("torch").Generator().manual_seed(0)
    windows = __import__("torch").randint(3, 300, (30, 16), generator=g)
    monkeypatch.setattr(prose, "prose_windows", lambda tok: windows)
    out = tmp_path / "r.json"
    args = dream_args(tiny_dirs, out)[:-2] + [
        "--judge",
        tiny_dirs["model"],
        "--feature",
        "3",
        "--ladder",
        "p50",
        "none",
    ]
    code, cap = run_cli(capsys, args)
    assert code == 0, cap.err
    res = json.loads(out.read_text())
    assert 0 <= res["judge"]["percentile"] <= 100 and res["judge"]["judge"] == tiny_dirs["model"]
    assert all(g["judge"] is not None for g in res["ladder"]) and len(res["ladder"]) == 2
    assert "judge       : percentile" in cap.out
    code, cap = run_cli(capsys, dream_args(tiny_dirs, out) + ["--feature", "3", "--ladder", "off"])
    assert (
        code == 0
        and json.loads(out.read_text())["ladder"] == []
        and json.loads(out.read_text())["judge"] is None
    )


def test_subprocess_bad_feature_no_traceback(tiny_dirs, tmp_path):
    cmd = (
        [sys.executable, "-m", "featuredream.cli"]
        + dream_args(tiny_dirs, tmp_path / "r.json")
        + ["--feature", "abc"]
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "Traceback" not in proc.stderr


def test_unexpected_error_is_one_line_and_v_shows_the_traceback(tiny_dirs, tmp_path, capsys, monkeypatch):
    """A bug (not bad input) in a command: one line naming it, exit 1; ``-v`` adds the traceback."""
    from featuredream.cli import train

    def broken(args):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setitem(train.COMMANDS, "train-sae", broken)
    argv = ["train-sae", "--out", str(tmp_path / "sae")]
    code, cap = run_cli(capsys, argv)
    assert code == 1 and cap.out == ""
    assert cap.err.strip().splitlines() == [
        "featuredream: error: unexpected RuntimeError: disk on fire "
        "(rerun as 'featuredream -v ...' for the full traceback)"
    ]
    code, cap = run_cli(capsys, ["-v", *argv])
    assert code == 1
    assert "Traceback (most recent call last)" in cap.err and "in broken" in cap.err
    assert cap.err.strip().splitlines()[-1] == "featuredream: error: unexpected RuntimeError: disk on fire"
    # bad input keeps its own one line and exit 2; Ctrl-C keeps 130
    monkeypatch.setitem(train.COMMANDS, "train-sae", lambda args: int("x"))
    code, cap = run_cli(capsys, argv)
    assert code == 2 and "unexpected" not in cap.err and "Traceback" not in cap.err
    monkeypatch.setitem(train.COMMANDS, "train-sae", lambda args: (_ for _ in ()).throw(KeyboardInterrupt))
    code, cap = run_cli(capsys, argv)
    assert code == 130 and cap.err.strip() == "featuredream: interrupted"


def test_subprocess_unexpected_error_no_traceback(tmp_path):
    """The same in a real process (logging and transformers set up as for a user): no traceback on stderr
    without ``-v``, one with it; exit 1 either way."""
    code = (
        "import sys\n"
        "from featuredream.cli import main, train\n"
        "def broken(args):\n"
        "    raise OSError('device not ready')\n"
        "train.COMMANDS['train-sae'] = broken\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    for verbose in ([], ["-v"]):
        proc = subprocess.run(
            [sys.executable, "-c", code, *verbose, "train-sae", "--out", str(tmp_path / "s")],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 1
        assert ("Traceback" in proc.stderr) == bool(verbose), proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("featuredream: error: unexpected OSError")


# ---------------------------------------------- score and train-sae, checked against independent computations


def test_cli_score_prints_each_texts_activation_and_xe(
    tiny_dirs, tiny_llama, tiny_tokenizer, capsys, one_thread
):
    """The identity SAE's latent 3 is coordinate 3 of resid_post 1 (the site check refuses SAEs that do not
    reconstruct well, so the CLI is checked with an exact one; SAE weights by hand: test_finish.py)."""
    import re

    import pytest
    from helpers.by_hand import mean_xe, resid

    texts = ["The quick brown fox", "To be, or not to be"]
    for reduce in ("last", "max"):
        args = ["score", "--model", tiny_dirs["model"], "--sae", tiny_dirs["sae"], "--feature", "3"]
        code, cap = run_cli(capsys, args + ["--reduce", reduce] + texts)
        assert code == 0, cap.err
        lines = cap.out.strip().splitlines()
        assert len(lines) == len(texts), cap.out
        for line, text in zip(lines, texts):  # "  activation  XE x  'text'", in the order given
            m = re.fullmatch(r"\s*(-?[0-9.]+)  XE\s+([0-9.]+)  (.*)", line)
            assert m and m.group(3) == repr(text), line
            ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
            values = resid(tiny_llama, ids, "resid_post", 1)[:, 3]  # a plain forward pass
            want = values[-1] if reduce == "last" else values.max()
            assert float(m.group(1)) == pytest.approx(float(want), abs=6e-4)  # printed with 3 decimals
            assert float(m.group(2)) == pytest.approx(mean_xe(tiny_llama, ids), abs=6e-4)


def test_cli_train_sae_writes_an_sae_that_load_sae_reads_back(
    tiny_dirs, tiny_llama, tmp_path, capsys, monkeypatch, one_thread
):
    import re

    import pytest
    from helpers.corpus import tiny_corpus

    from featuredream import Site, load_sae
    from featuredream.text import corpus

    monkeypatch.setattr(corpus, "default_corpus", tiny_corpus)  # offline and small: no wheel, no pydoc
    out = tmp_path / "sae"
    flags = {
        "site": "blocks.1.hook_resid_post",
        "d-sae": 32,
        "k": 8,
        "ctx": 16,
        "epochs": 10,
        "batch": 64,
        "lr": 0.01,
        "aux-k": 8,
        "dead-tokens": 2000,
        "top-k-examples": 2,
        "forward-batch": 16,
        "seed": 1,
    }
    args = ["train-sae", "--out", str(out), "--model", tiny_dirs["model"]]
    code, cap = run_cli(capsys, args + [a for k, v in flags.items() for a in (f"--{k}", str(v))])
    assert code == 0, cap.err
    stats = json.loads((out / "stats.json").read_text())
    m = re.search(r"wrote .*: FVU ([0-9.]+)", cap.out)
    assert m and float(m.group(1)) == pytest.approx(stats["fvu_heldout"], abs=6e-4)
    assert stats["fvu_heldout"] < 0.5  # trained: an untrained SAE leaves ~all the variance
    tc = stats["train_config"]
    assert (tc["d_sae"], tc["k"], tc["ctx"], tc["seed"], tc["site"]) == (32, 8, 16, 1, flags["site"])
    sae = load_sae(out, model=tiny_llama)
    assert sae.site == Site("resid_post", 1) and sae.d_sae == 32 and sae.sae.cfg.k == 8
    assert sae.stats.top_values.shape == (32, 2) and sae.stats.has_xe_table()
    # and the CLI accepts what it wrote (the site check passes at its own site)
    code, cap = run_cli(
        capsys, ["score", "--model", tiny_dirs["model"], "--sae", str(out), "--feature", "0", "To be"]
    )
    assert code == 0, cap.err


def test_every_command_prints_its_help(capsys):
    """--help of every command renders (a '%' in a config field's doc once crashed train-sae --help)."""
    from featuredream.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in sub.choices:
        code, out = run_cli(capsys, [name, "--help"])
        assert code == 0 and "usage" in out.out, name


def test_shipped_field_docs_are_current():
    """The CLI help reads the shipped field docs (no source file at run time); they equal the sources'."""
    import json
    from importlib import resources

    from featuredream.engine.config import FIELD_DOCS, DreamConfig, field_docs, source_field_docs
    from featuredream.saes.stats import StatsConfig
    from featuredream.saes.training import TrainConfig

    shipped = json.loads((resources.files("featuredream") / "data" / FIELD_DOCS).read_text())
    for cls in (DreamConfig, StatsConfig, TrainConfig):
        assert shipped[cls.__name__] == source_field_docs(cls), (
            f"run python scripts/field_docs.py ({cls.__name__})"
        )
        assert field_docs(cls) == source_field_docs(cls)
    assert "ladder" in field_docs(DreamConfig) and "xe_reference" in field_docs(StatsConfig)


def test_help_reads_as_plain_text(capsys):
    """``--help`` shows the field docs without reST: no ``literal`` marks, no :func:/:mod: roles."""
    import re

    from featuredream.cli.main import main

    for cmd in (["dream", "--help"], ["stats", "--help"], ["train-sae", "--help"]):
        try:
            main(cmd)
        except SystemExit:
            pass
        out = capsys.readouterr().out
        assert "--xe-max" in out or "--tokens" in out or "--d-sae" in out
        assert "``" not in out and not re.search(r":(func|mod|class|data|meth):`", out), cmd
