"""The README a user reads first: short, its two commands the ones that work (the second is exactly what
``.ci/run`` runs), and every relative link in it and in ``docs/`` pointing at a file that exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_LINES = 250


def _bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_the_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= MAX_LINES, f"README.md has {n} lines (at most {MAX_LINES}: details go to docs/)"


def test_the_two_commands_install_torch_pinned_and_ci_runs_the_second():
    first, second = _bash_blocks(README.read_text())[:2]
    for cmd in (first, second):
        assert "pip install" in cmd and "torch==2.13.0" in cmd, cmd  # never a plain multi-GB CUDA torch
    assert "featuredream dream" in first
    ci = (ROOT / ".ci" / "run").read_text()
    assert second in ci, f".ci/run does not run the README's test command:\n{second}"


def test_relative_links_resolve():
    missing = []
    for doc in [README, *(ROOT / "docs").glob("*.md"), ROOT / "benchmarks" / "README.md"]:
        for target in re.findall(r"\]\(([^)\s`#]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" not in target and not (doc.parent / target).exists():
                missing.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not missing, missing
