"""The sweep store: ``DIR/sweep.sqlite`` with one record per feature, and the fingerprint it refuses to mix.

**Why SQLite** (stdlib ``sqlite3``) rather than append-only JSONL: a commit is atomic and durable
(``synchronous=FULL``; a kill at any moment, even mid-write, leaves the last committed state, the
rollback journal undoing a half-written transaction on the next open), so there is never a torn
record to detect and skip; ``feature`` is the primary key and rows are written with ``INSERT OR
IGNORE``, so a retried Ray task or a resumed run can never duplicate a feature; the summary can read
while a sweep writes; and the store's identity (``meta``) lives in the same file as the records. The
one writer is always the driver process (Ray workers return results to it), so no network file system
locking is needed.

A store remembers the **fingerprint** of what it holds (model, SAE, objective, reduction, norm guard and
every result-affecting ``DreamConfig`` field, plus what resolves per device: the dtype, the attention
implementation and ``n_children``, see :func:`resolve_runtime`); a run with a different fingerprint is
refused with the first difference named, so two configurations (or a CPU and a GPU run with the default
dtype) never mix in one directory. A store that holds no record yet (a run that failed before its first
group) takes the new fingerprint instead, so a corrected rerun is never locked out; a run still going under
the old fingerprint is then refused on its next write (every write checks the fingerprint it opened with).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..engine.config import default_children
from ..engine.results import FeatureError
from ..models.identity import model_identity, sae_identity
from .spec import SweepSpec

__all__ = ["STORE_FILE", "SweepStore", "check_out_dir", "first_difference", "fingerprint", "resolve_runtime"]

log = logging.getLogger(__name__)

STORE_FILE = "sweep.sqlite"
SCHEMA_VERSION = 2
"""2: the fingerprint holds the resolved dtype, attention implementation and n_children."""
SPEED_ONLY = ("progress", "batch_size", "prefix_cache")
"""DreamConfig fields that change speed or display only; left out of the fingerprint."""

# ------------------------------------------------------------------------------------ fingerprint


def resolve_runtime(spec: SweepSpec) -> dict[str, Any]:
    """What ``spec`` resolves to on this machine: ``{"dtype", "attention", "n_children"}``.

    The same choices :func:`featuredream.load_model` and :func:`featuredream.dream_many` make
    (bfloat16 and maybe flash-attn on a GPU, float32 and SDPA on a CPU; 128 or 32 children), so a store
    fingerprints what really ran. ValueError for a device this machine lacks or float16 on a CPU.
    """
    import torch

    from ..models.loading import parse_device, parse_dtype, runtime_defaults

    dev = parse_device(spec.device)
    dtype, attn = runtime_defaults(dev, parse_dtype(spec.dtype))
    if dtype == torch.float16 and dev.type == "cpu":
        raise ValueError("dtype 'float16' is not supported on cpu: valid are 'float32', 'bfloat16'")
    n = spec.config.n_children if spec.config.n_children is not None else default_children(dev.type)
    return {"dtype": str(dtype).removeprefix("torch."), "attention": attn, "n_children": n}


def fingerprint(spec: SweepSpec, runtime: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a store's records depend on (see module doc); compared key by key on every open.

    ``runtime``: :func:`resolve_runtime` where the features run (None: resolved in this process)."""
    rt = resolve_runtime(spec) if runtime is None else runtime
    cfg = {k: v for k, v in asdict(spec.config).items() if k not in SPEED_ONLY}
    cfg["n_children"] = rt["n_children"]
    return {
        "schema": SCHEMA_VERSION,
        "model": model_identity(spec.model),
        "sae": sae_identity(spec.sae)[0],
        "objective": spec.kind,
        "reduce": spec.reduce,
        "norm_guard": spec.norm_guard,
        "dtype": rt["dtype"],
        "attention": rt["attention"],
        "config": json.loads(json.dumps(cfg)),
    }


def first_difference(old: dict, new: dict, prefix: str = "") -> tuple[str, Any, Any] | None:
    """``(dotted key, old value, new value)`` of the first key (sorted, depth first) where two nested
    dicts differ; None when they are equal."""
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            d = first_difference(a, b, f"{prefix}{key}.")
            if d:
                return d
        elif a != b:
            return f"{prefix}{key}", a, b
    return None


# ------------------------------------------------------------------------------------ the store


def check_out_dir(out_dir: str | Path) -> Path:
    """``out_dir`` as a path, if it can hold a store (a directory, or one that can be created)."""
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {str(out)!r} is a file: valid is a directory for the sweep")
    if not out.parent.is_dir():
        raise ValueError(f"parent of output directory {str(out)!r} does not exist: create it first")
    return out


@dataclass(frozen=True)
class StoredDream:
    """One of a stored feature's distinct dreams."""

    text: str
    activation: float
    ratio: float | None
    xe: float
    above_floor: bool
    judge_pct: float | None


@dataclass(frozen=True)
class SweepRow:
    """One stored feature: its columns (``status`` 'ok' or 'error'), the judge's percentile of its best
    prompt (None without a judge), what the best prompt is (``headline``) and its distinct dreams."""

    feature: int
    status: str
    activation: float | None
    xe: float | None
    dataset_max: float | None
    ratio: float | None
    feasible: bool | None
    text: str | None
    error: str | None
    seconds: float | None
    judge_pct: float | None = None
    headline: str | None = None
    dreams: tuple[StoredDream, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def from_columns(
        cls, feature, status, activation, xe, dmax, ratio, feasible, text, error, seconds, record
    ):
        """A row from the ``results`` table's columns; the JSON ``record`` gives the judge and the dreams."""
        rec = json.loads(record) if record else {}
        judge = rec.get("judge") or {}
        dreams = tuple(
            StoredDream(
                d["prompt"]["text"],
                d["prompt"]["activation"],
                d.get("ratio"),
                d["prompt"]["xe"],
                bool(d["above_floor"]),
                (d.get("judge") or {}).get("percentile"),
            )
            for d in rec.get("dreams", [])
        )
        feas = None if feasible is None else bool(feasible)
        row = (feature, status, activation, xe, dmax, ratio, feas, text, error, seconds)
        return cls(*row, judge.get("percentile"), rec.get("headline"), dreams)


class SweepStore:
    """``DIR/sweep.sqlite``: ``meta(key, value)`` and ``results`` (one row per feature; see module doc)."""

    def __init__(self, path: Path, readonly: bool = False):
        """Connect to ``path``; ``readonly``: open it as it is (no tables created, nothing written)."""
        self.path = path
        self.conn = None
        self.claimed: dict[str, Any] | None = None
        """The fingerprint this run opened the store with (checked again on every write)."""
        try:
            if readonly:
                uri = f"{Path(path).resolve().as_uri()}?mode=ro"
                self.conn = sqlite3.connect(uri, uri=True, timeout=60)
                return
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
            self.close()
            raise ValueError(f"{str(path)!r} is not a featuredream sweep store ({e})") from None

    @classmethod
    def open(
        cls,
        out_dir: str | Path,
        spec: SweepSpec,
        *,
        resume: bool = False,
        runtime: dict[str, Any] | None = None,
    ) -> SweepStore:
        """Open (or create) the store of ``out_dir`` for ``spec``; refuse another fingerprint or a finished
        sweep without ``resume``. ``runtime``: see :func:`fingerprint`."""
        out = check_out_dir(out_dir)
        spec = spec.resolved()  # the stored spec names absolute local paths (summary cards, Ray workers)
        fp = fingerprint(spec, runtime)
        out.mkdir(exist_ok=True)
        store = cls(out / STORE_FILE)
        try:
            store._claim(out, spec, fp, resume)
        except sqlite3.DatabaseError as e:
            store.close()
            raise ValueError(f"{str(store.path)!r} is not a featuredream sweep store ({e})") from None
        except BaseException:
            store.close()
            raise
        return store

    def _claim(self, out: Path, spec: SweepSpec, fp: dict[str, Any], resume: bool) -> None:
        """Check ``fp`` against the stored fingerprint, or write it (see module doc)."""
        self.claimed = fp
        old = self.meta("fingerprint")
        n = len(self.done())
        if old is not None and old != fp and n == 0:
            diff = first_difference(old, fp) or ("fingerprint", old, fp)
            log.warning("%s holds no record yet: replacing its configuration (%s=%r -> %r)", out, *diff)
            old = None
        if old is None:
            with self.conn:
                for key, value in (("fingerprint", fp), ("spec", spec.to_dict()), ("created", time.time())):
                    self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))
            return
        if old.get("schema") != fp["schema"]:
            raise ValueError(
                f"{str(out)!r} holds a sweep of store schema {old.get('schema')!r} (an older featuredream), "
                f"this one writes schema {fp['schema']}: valid is a new --out"
            )
        diff = first_difference(old, fp)
        if diff is not None:
            key, a, b = diff
            raise ValueError(
                f"{str(out)!r} holds a sweep with {key}={a!r}, this run has {key}={b!r}: refusing to mix "
                "results of different SAEs/models/configs/hardware in one store; use another --out"
            )
        if n and not resume:
            raise ValueError(
                f"{str(out)!r} already holds a sweep with {n} finished features: pass --resume to "
                "continue it, or use another --out"
            )

    @classmethod
    def read(cls, out_dir: str | Path) -> SweepStore:
        """Open an existing store read-only (the summary); ValueError for a file that is not one."""
        path = Path(out_dir).expanduser() / STORE_FILE
        if not path.is_file():
            raise ValueError(
                f"no sweep in {str(out_dir)!r} (no {STORE_FILE}): valid is a 'featuredream sweep' --out"
            )
        store = cls(path, readonly=True)
        try:
            fp = store.meta("fingerprint")
        except (sqlite3.DatabaseError, ValueError) as e:
            store.close()
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(f"{str(path)!r} is not a featuredream sweep store ({msg})") from None
        if not isinstance(fp, dict):
            store.close()
            raise ValueError(f"{str(path)!r} is not a featuredream sweep store (no fingerprint)")
        return store

    def meta(self, key: str) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def spec(self) -> SweepSpec:
        """The :class:`~featuredream.sweep.SweepSpec` the store was created with."""
        return SweepSpec.from_dict(self.meta("spec"))

    def done(self) -> set[int]:
        """Features with a record (finished or failed: both are final)."""
        return {r[0] for r in self.conn.execute("SELECT feature FROM results")}

    def put(self, items: list[tuple[int, Any]], worker: str = "") -> int:
        """Write ``(feature, DreamResult | FeatureError)`` pairs in one transaction; a feature already
        stored is kept as it is (idempotent). Returns how many were new. ValueError when another run
        replaced the fingerprint since this one opened the store (see :meth:`open`)."""
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
            if self.claimed is not None and self.meta("fingerprint") != self.claimed:
                raise ValueError(
                    f"{str(self.path)!r}: another run replaced this store's configuration while it held no "
                    "record; refusing to write under it: rerun with another --out"
                )
            before = self.conn.total_changes
            self.conn.executemany("INSERT OR IGNORE INTO results VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            return self.conn.total_changes - before

    def rows(self) -> list[SweepRow]:
        """Every record's summary (:class:`SweepRow`: the columns, the judge's percentile of the best prompt,
        the headline's kind and the distinct dreams), by feature."""
        cur = self.conn.execute(
            "SELECT feature, status, activation, xe, dataset_max, ratio, feasible, text, error, seconds, "
            "record FROM results ORDER BY feature"
        )
        return [SweepRow.from_columns(*values) for values in cur]

    def result(self, feature: int):
        """The full :class:`~featuredream.DreamResult` of ``feature`` (None if absent or failed)."""
        from ..engine.results import DreamResult

        row = self.conn.execute("SELECT record FROM results WHERE feature = ?", (feature,)).fetchone()
        return DreamResult.from_json(row[0]) if row and row[0] else None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
