"""The sweep store: ``DIR/sweep.sqlite`` with one record per feature, and the fingerprint it refuses to mix.

**Why SQLite** (stdlib ``sqlite3``) rather than append-only JSONL: a commit is atomic and durable
(``synchronous=FULL``; a kill at any moment, even mid-write, leaves the last committed state, the
rollback journal undoing a half-written transaction on the next open), so there is never a torn
record to detect and skip; ``feature`` is the primary key and rows are written with ``INSERT OR
IGNORE``, so a retried Ray task or a resumed run can never duplicate a feature; the summary can read
while a sweep writes; and the store's identity (``meta``) lives in the same file as the records. The
one writer is always the driver process (Ray workers return results to it), so no network file system
locking is needed.

A store remembers the **fingerprint** of what it holds (model, SAE, objective, reduction, norm guard,
dtype and every result-affecting ``DreamConfig`` field); a run with a different fingerprint is refused
with the first difference named, so two configurations never mix in one directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .multi import FeatureError

STORE_FILE = "sweep.sqlite"
SCHEMA_VERSION = 1
SPEED_ONLY = ("progress", "batch_size", "prefix_cache")
"""DreamConfig fields that change speed or display only; left out of the fingerprint."""

# ------------------------------------------------------------------------------------ fingerprint


def _file_digest(path: Path, limit: int = 1 << 20) -> str:
    """sha256 of a file's size and first ``limit`` bytes (cheap for multi-GB weights)."""
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(limit))
    return h.hexdigest()[:16]


def _dir_identity(path: Path) -> str:
    parts = [str(path.resolve())]
    for name in sorted(os.listdir(path)):
        p = path / name
        if p.is_file() and (name.endswith((".json", ".safetensors"))):
            parts.append(f"{name}:{_file_digest(p)}")
    return "|".join(parts)


def sae_identity(spec: str) -> tuple[str, Path | None]:
    """A stable identity of an SAE spec, and its directory when it has one (fixture or local dir)."""
    from .saes import FIXTURE_ALIASES, FIXTURE_DIR

    name = FIXTURE_ALIASES.get(spec, spec)
    if Path(name).name == name and (FIXTURE_DIR / name / "cfg.json").exists():
        return f"fixture:{name}", FIXTURE_DIR / name
    p = Path(spec).expanduser()
    if p.is_dir():
        return f"dir:{_dir_identity(p)}", p
    return f"spec:{spec}", None


def sae_width(spec: str) -> int:
    """Number of latents of an SAE spec (read from ``cfg.json`` when there is one; no weights loaded)."""
    _, path = sae_identity(spec)
    if path is not None and (path / "cfg.json").exists():
        try:
            return int(json.loads((path / "cfg.json").read_text())["d_sae"])
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"SAE {spec!r}: cfg.json has no readable d_sae") from None
    from .saes import load_sae

    return load_sae(spec, device="cpu").d_sae


def fingerprint(spec) -> dict[str, Any]:
    """What a store's records depend on (see module doc); compared key by key on every open."""
    from .models import DEFAULT_ALIASES, DEFAULT_MODEL

    if spec.model is None or spec.model in DEFAULT_ALIASES:
        model = DEFAULT_MODEL
    elif Path(spec.model).expanduser().is_dir():
        model = f"dir:{_dir_identity(Path(spec.model).expanduser())}"
    else:
        model = spec.model
    cfg = {k: v for k, v in asdict(spec.config).items() if k not in SPEED_ONLY}
    return {
        "schema": SCHEMA_VERSION,
        "model": model,
        "sae": sae_identity(spec.sae)[0],
        "objective": spec.kind,
        "reduce": spec.reduce,
        "norm_guard": spec.norm_guard,
        "dtype": spec.dtype or "default",
        "config": json.loads(json.dumps(cfg)),
    }


def _first_difference(old: dict, new: dict, prefix: str = "") -> tuple[str, Any, Any] | None:
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            d = _first_difference(a, b, f"{prefix}{key}.")
            if d:
                return d
        elif a != b:
            return f"{prefix}{key}", a, b
    return None


# ------------------------------------------------------------------------------------ the store


class SweepStore:
    """``DIR/sweep.sqlite``: ``meta(key, value)`` and ``results`` (one row per feature; see module doc)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.conn = sqlite3.connect(str(path), timeout=60)
            self.conn.execute("PRAGMA synchronous=FULL")
            with self.conn:
                self.conn.execute(
                    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
                )
                self.conn.execute(
                    "CREATE TABLE IF NOT EXISTS results (feature INTEGER PRIMARY KEY, status TEXT NOT NULL, "
                    "activation REAL, xe REAL, dataset_max REAL, ratio REAL, feasible INTEGER, text TEXT, "
                    "error TEXT, seconds REAL, worker TEXT, written REAL, record TEXT)"
                )
        except sqlite3.DatabaseError as e:
            raise ValueError(f"{str(path)!r} is not a featuredream sweep store ({e})") from None

    @classmethod
    def open(cls, out_dir: str | Path, spec, *, resume: bool = False) -> SweepStore:
        """Open (or create) the store of ``out_dir`` for ``spec``; refuse another fingerprint or a finished
        sweep without ``resume``."""
        out = Path(out_dir).expanduser()
        if out.exists() and not out.is_dir():
            raise ValueError(f"output path {str(out)!r} is a file: valid is a directory for the sweep")
        if not out.parent.is_dir():
            raise ValueError(f"parent of output directory {str(out)!r} does not exist: create it first")
        out.mkdir(exist_ok=True)
        store = cls(out / STORE_FILE)
        fp = fingerprint(spec)
        old = store.meta("fingerprint")
        if old is not None:
            diff = _first_difference(old, fp)
            if diff is not None:
                store.close()
                key, a, b = diff
                raise ValueError(
                    f"{str(out)!r} holds a sweep with {key}={a!r}, this run has {key}={b!r}: refusing to mix "
                    "results of different SAEs/models/configs in one store; use another --out"
                )
            n = len(store.done())
            if n and not resume:
                store.close()
                raise ValueError(
                    f"{str(out)!r} already holds a sweep with {n} finished features: pass --resume to "
                    "continue it, or use another --out"
                )
        else:
            with store.conn:
                store.conn.execute("INSERT INTO meta VALUES ('fingerprint', ?)", (json.dumps(fp),))
                store.conn.execute("INSERT INTO meta VALUES ('spec', ?)", (json.dumps(spec.to_dict()),))
                store.conn.execute("INSERT INTO meta VALUES ('created', ?)", (str(time.time()),))
        return store

    @classmethod
    def read(cls, out_dir: str | Path) -> SweepStore:
        """Open an existing store for reading (the summary)."""
        path = Path(out_dir).expanduser() / STORE_FILE
        if not path.is_file():
            raise ValueError(
                f"no sweep in {str(out_dir)!r} (no {STORE_FILE}): valid is a 'featuredream sweep' --out"
            )
        store = cls(path)
        if store.meta("fingerprint") is None:
            raise ValueError(f"{str(path)!r} is not a featuredream sweep store (no fingerprint)")
        return store

    def meta(self, key: str) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def spec(self):
        """The :class:`~featuredream.sweep.SweepSpec` the store was created with."""
        from .sweep import SweepSpec

        return SweepSpec.from_dict(self.meta("spec"))

    def done(self) -> set[int]:
        """Features with a record (finished or failed: both are final)."""
        return {r[0] for r in self.conn.execute("SELECT feature FROM results")}

    def put(self, items: list[tuple[int, Any]], worker: str = "") -> int:
        """Write ``(feature, DreamResult | FeatureError)`` pairs in one transaction; a feature already
        stored is kept as it is (idempotent). Returns how many were new."""
        rows = []
        now = time.time()
        for f, r in items:
            if isinstance(r, FeatureError):
                rows.append(
                    (f, "error", None, None, None, None, None, None, r.message, None, worker, now, None)
                )
            else:
                rows.append(
                    (
                        f,
                        "ok",
                        r.best.activation,
                        r.best.xe,
                        r.dataset_max,
                        r.ratio,
                        int(r.feasible),
                        r.best.text,
                        None,
                        r.wall_time,
                        worker,
                        now,
                        r.to_json(),
                    )
                )
        with self.conn:
            before = self.conn.total_changes
            self.conn.executemany("INSERT OR IGNORE INTO results VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            return self.conn.total_changes - before

    def rows(self) -> list[dict[str, Any]]:
        """Every record's summary columns (no full result), by feature."""
        cur = self.conn.execute(
            "SELECT feature, status, activation, xe, dataset_max, ratio, feasible, text, error, seconds "
            "FROM results ORDER BY feature"
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur]

    def result(self, feature: int):
        """The full :class:`~featuredream.results.DreamResult` of ``feature`` (None if absent or failed)."""
        from .results import DreamResult

        row = self.conn.execute("SELECT record FROM results WHERE feature = ?", (feature,)).fetchone()
        return DreamResult.from_json(row[0]) if row and row[0] else None

    def close(self) -> None:
        self.conn.close()
