"""Fast sweep configurations and readers of a sweep store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from featuredream.cli.main import main
from featuredream.engine.config import DreamConfig
from featuredream.sweep import STORE_FILE, SweepSpec

FAST = dict(
    iters=3,
    n_children=8,
    min_tokens=3,
    max_tokens=10,
    start="prompt",
    init_prompt="The quick brown fox",
    gcg_topk=16,
    progress=False,
)
FAST_ARGS = [
    "--iters", "3", "--n-children", "8", "--min-tokens", "3", "--max-tokens", "10", "--start", "prompt",
    "--init-prompt", "The quick brown fox", "--gcg-topk", "16", "--no-progress", "--device", "cpu",
]  # fmt: skip


def sweep_spec(d, **cfg):
    """The spec of a fast sweep of ``sweep_dirs`` (config overrides in ``cfg``)."""
    return SweepSpec(
        model=d["model"], sae=d["sae"], device="cpu", config=DreamConfig(**{**FAST, **cfg}), group_size=2
    )


def records(out):
    """A store's rows straight from SQLite: (feature, status, text, activation, xe)."""
    con = sqlite3.connect(str(Path(out) / STORE_FILE))
    rows = con.execute(
        "SELECT feature, status, text, activation, xe FROM results ORDER BY feature"
    ).fetchall()
    con.close()
    return rows


def same_records(a, b):
    """Two stores' rows agree: same features, statuses and texts, scores within 1e-4."""
    assert [r[:3] for r in a] == [r[:3] for r in b]  # same features, statuses, dreamed texts
    for x, y in zip(a, b):
        assert abs(x[3] - y[3]) <= 1e-4 and abs(x[4] - y[4]) <= 1e-4


def cli(capsys, *argv):
    """``featuredream ARGV`` in this process: ``(exit code, stdout, stderr)``."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err
