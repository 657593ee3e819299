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
