"""Running the CLI in tests."""

from __future__ import annotations

from featuredream.cli.main import main


def run_cli(capsys, args):
    """``featuredream ARGS`` in this process: ``(exit code, captured output)``."""
    code = main(args)
    return code, capsys.readouterr()


def dream_args(d, out):
    """A fast ``featuredream dream`` of the tiny model and SAE on disk (``tiny_dirs``), writing ``out``."""
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
        "--judge",
        "none",
    ]
