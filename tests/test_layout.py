"""The package's structure, checked: rooms (subpackages by concept) import only those below them, each says
in its ``__init__`` what it holds and what it may import, no import cycle, no module imports another
module's private ``_name``, files and rooms stay small, functions stay short (in the package, benchmarks/ and
scripts/ alike), and no module is named like a standard-library module or a dependency."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "featuredream"
LAYERS = ["", "models", "text", "saes", "objectives", "evaluation", "engine", "observe", "sweep", "cli"]
"""Bottom to top; "" is the top-level helper modules (``checks``, ...). ``__init__`` is the public facade."""
ROOM_LINES = 3200
"""A room (subpackage) at most this many lines: past it, it holds more than one concept."""


def _modules() -> dict[str, Path]:
    out = {}
    for f in SRC.rglob("*.py"):
        parts = f.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def _imports(
    name: str, path: Path, mods: dict[str, Path], source: str | None = None
) -> list[tuple[str, str]]:
    """``(target module, imported name)`` for every import of a featuredream module in ``path`` (its text,
    or ``source`` as if it were there: nothing is written)."""
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = base[: len(base) - node.level + 1]
                target = ".".join(pkg + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                out.append((full, "") if full in mods else (target, alias.name))
        elif isinstance(node, ast.Import):
            out += [(a.name, "") for a in node.names]
    return [(t, n) for t, n in out if t in mods and t != name]


def _layer(name: str) -> int:
    parts = name.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else 0


MODS = _modules()
EDGES = {name: _imports(name, path, MODS) for name, path in MODS.items()}


def test_every_module_is_in_a_layer():
    for name in MODS:
        parts = name.split(".")
        assert len(parts) <= 3 and (len(parts) < 3 or parts[1] in LAYERS), name


def test_layers_import_only_those_below():
    bad = [
        f"{src} -> {dst}"
        for src, edges in EDGES.items()
        if src != "featuredream"
        for dst, _ in edges
        if dst != "featuredream" and _layer(dst) > _layer(src)
    ]
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    graph = {src: {dst for dst, _ in edges} for src, edges in EDGES.items()}
    state: dict[str, int] = {}

    def visit(v: str, path: list[str]) -> None:
        state[v] = 1
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(w) :] + [w]))
            if w not in state:
                visit(w, path + [w])
        state[v] = 2

    for v in sorted(graph):
        if v not in state:
            visit(v, [v])


def test_no_private_cross_module_import():
    bad = [
        f"{src} imports {dst}.{n}" for src, edges in EDGES.items() for dst, n in edges if n.startswith("_")
    ]
    assert not bad, "\n".join(bad)


def test_files_stay_small():
    big = {str(p.relative_to(SRC)): n for p in MODS.values() if (n := len(p.read_text().splitlines())) > 400}
    assert not big, big


def test_rooms_stay_small_and_say_what_they_hold():
    """Each room's ``__init__`` docstring says what it holds and what it may import; no room is over
    :data:`ROOM_LINES` lines."""
    for room in LAYERS[1:]:
        init = SRC / room / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert len(doc.split()) > 20 and "import" in doc, f"{room}/__init__.py does not say what it holds"
        lines = sum(len(p.read_text().splitlines()) for p in (SRC / room).glob("*.py"))
        assert lines <= ROOM_LINES, f"{room}/ has {lines} lines"


def test_functions_stay_short():
    """Every function of the package, the benchmarks and the scripts fits in ~60 lines; the CLI's
    declarative argparse ``register`` functions (one ``add_argument`` after another) are the exception."""
    long_ = []
    files = [*SRC.rglob("*.py"), *(ROOT / "benchmarks").glob("*.py"), *(ROOT / "scripts").glob("*.py")]
    for p in files:
        for node in ast.walk(ast.parse(p.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or node.name == "register":
                continue
            if (n := node.end_lineno - node.lineno + 1) > 62:
                long_.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long_, long_


def test_the_checks_can_fail():
    """The graph reader sees relative imports of private names and upward imports (a fabricated module)."""
    fake = SRC / "models" / "loading.py"
    edges = _imports("featuredream.models.loading", fake, MODS)
    assert all(_layer(dst) <= _layer("featuredream.models.loading") for dst, _ in edges)
    assert (
        _layer("featuredream.cli.main")
        > _layer("featuredream.engine.loop")
        > _layer("featuredream.objectives.kinds")
        > _layer("featuredream.saes.loading")
        > _layer("featuredream.text.corpus")
        > _layer("featuredream.models.sites")
    )
    src = "from ..engine.loop import _x\nfrom . import sites\n"
    got = _imports(
        "featuredream.models.__probe__", SRC / "models" / "__probe__.py", MODS, source=src
    )  # never written
    assert ("featuredream.engine.loop", "_x") in got and ("featuredream.models.sites", "") in got


def test_no_module_shadows_the_standard_library_or_a_dependency():
    """A module named ``inspect``, ``signal`` or ``ray`` reads as the library of that name in a traceback
    and in an import line; names say what a module holds instead."""
    import sys

    taken = set(sys.stdlib_module_names) | {"torch", "transformers", "ray", "safetensors", "sae_lens", "tqdm"}
    bad = [name for name in MODS if name.split(".")[-1] in taken]
    assert not bad, bad
