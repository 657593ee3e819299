"""``examples/quickstart.ipynb``: stored without outputs, and run headless (nbclient + ipykernel) on the real
default model with every cell error failing the test; the inline views must be in its outputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "quickstart.ipynb"
KERNEL = "featuredream-test"


def test_repo_notebook_is_stripped():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, "the quickstart has no code cell"
    dirty = [i for i, c in enumerate(code) if c.get("outputs") or c.get("execution_count") is not None]
    assert not dirty, (
        f"code cells {dirty} keep outputs: clear them before committing (Cell > All Output > Clear)"
    )
    assert "widgets" not in nb.get("metadata", {}), "the notebook keeps widget state: strip it"


def _kernel_here(root: Path) -> None:
    """A kernelspec that starts ipykernel with this interpreter, so the notebook runs in this venv even when
    no ``python3`` kernel is installed (a fresh CI venv) or the installed one is another Python's."""
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"})
    )


@pytest.mark.slow
def test_quickstart_runs_headless(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    _kernel_here(tmp_path / "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))  # searched before the user's kernels
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=600,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell, with its traceback
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html = [
        o.data["text/html"] for o in outputs if o.output_type == "execute_result" and "text/html" in o.data
    ]
    assert len(html) == 2, "the dream result and its card are the cells' last expressions"
    result, card = html
    assert 'class="fd-view"' in result and "Dream of feature" in result and "dataset max" in result
    assert "<polyline" in result and 'class="tok' in result  # trajectory and coloured token chips
    assert card.startswith("<iframe srcdoc=") and "Top dataset examples" in card
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream" and o.name == "stdout")
    assert "strongest features" in text and "dreamed:" in text and "alpha" in text
