"""The CLI on tiny models saved to disk: bad input gets one line on stderr and exit 2, no partial files."""

from __future__ import annotations

import json
import subprocess
import sys

from featuredream.cli.main import main


def _run(capsys, args):
    code = main(args)
    return code, capsys.readouterr()


def _base(d, out):
    return [
        "dream",
        "--model",
        d["model"],
        "--sae",
        d["sae"],
        "--out",
        str(out),
        "--no-progress",
        "--min-tokens",
        "3",
        "--max-tokens",
        "12",
        "--n-children",
        "8",
        "--iters",
        "2",
        "--n-start-samples",
        "2",
    ]


def test_cli_dream_writes_result(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "r.json"
    code, cap = _run(
        capsys, _base(tiny_dirs, out) + ["--feature", "3", "--objective", "decoder", "--reduce", "max"]
    )
    assert code == 0, cap.err
    res = json.loads(out.read_text())
    assert {"text", "activation", "xe"} <= set(res["best"]) and len(res["history"]) == 2
    assert "best prompt" in cap.out


def test_subprocess_bad_feature_no_traceback(tiny_dirs, tmp_path):
    cmd = (
        [sys.executable, "-m", "featuredream.cli"]
        + _base(tiny_dirs, tmp_path / "r.json")
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
    code, cap = _run(capsys, argv)
    assert code == 1 and cap.out == ""
    assert cap.err.strip().splitlines() == [
        "featuredream: error: unexpected RuntimeError: disk on fire "
        "(rerun as 'featuredream -v ...' for the full traceback)"
    ]
    code, cap = _run(capsys, ["-v", *argv])
    assert code == 1
    assert "Traceback (most recent call last)" in cap.err and "in broken" in cap.err
    assert cap.err.strip().splitlines()[-1] == "featuredream: error: unexpected RuntimeError: disk on fire"
    # bad input keeps its own one line and exit 2; Ctrl-C keeps 130
    monkeypatch.setitem(train.COMMANDS, "train-sae", lambda args: int("x"))
    code, cap = _run(capsys, argv)
    assert code == 2 and "unexpected" not in cap.err and "Traceback" not in cap.err
    monkeypatch.setitem(train.COMMANDS, "train-sae", lambda args: (_ for _ in ()).throw(KeyboardInterrupt))
    code, cap = _run(capsys, argv)
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
