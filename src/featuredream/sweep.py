"""Sweeps: dream every feature of a range, one durable record per feature, resumable after a kill.

``run_sweep(spec, features, out_dir)`` dreams the features in groups of ``spec.group_size`` (one
:func:`featuredream.multi.dream_many` per group) and writes each finished feature to a store in
``out_dir``; ``resume=True`` skips the features already there. Backends: ``local`` (this process) and
``ray`` (:mod:`featuredream.sweep_ray`, one task per group on a Ray cluster).

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
import logging
import os
import re
import socket
import sqlite3
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .config import DreamConfig
from .multi import FeatureError

log = logging.getLogger(__name__)

STORE_FILE = "sweep.sqlite"
SCHEMA_VERSION = 1
SPEED_ONLY = ("progress", "batch_size", "prefix_cache")
"""DreamConfig fields that change speed or display only; left out of the fingerprint."""
BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class SweepSpec:
    """Everything a sweep runs except the feature list; plain data, so Ray workers can rebuild it."""

    model: str | None = None
    """Model name or path (None: the embedded default)."""
    sae: str = "default"
    """SAE: fixture name, sae-lens directory, or release:sae_id."""
    kind: str = "encoder"
    """Objective: encoder (pre-activation) or decoder (projection)."""
    reduce: str = "last"
    """Position reduction: last, max, mean."""
    norm_guard: bool = True
    """Exclude massive-activation positions (the SAE's recorded norm cap)."""
    device: str | None = None
    """cpu, cuda (None: cuda if available)."""
    dtype: str | None = None
    """float32 (None: the loader's default), bfloat16, float16."""
    config: DreamConfig = field(default_factory=DreamConfig)
    """The dream configuration every feature runs with (same seed for all)."""
    group_size: int = 32
    """Features dreamed together in one multi-feature run."""

    def __post_init__(self) -> None:
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 1:
            raise ValueError(f"group_size={self.group_size!r} is invalid: valid is an integer >= 1")
        if self.kind not in ("encoder", "decoder"):
            raise ValueError(f"unknown objective {self.kind!r}: valid are encoder, decoder")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SweepSpec:
        d = dict(d)
        cfg = dict(d.pop("config"))
        if cfg.get("pareto") is not None:
            cfg["pareto"] = tuple(cfg["pareto"])
        known = set(DreamConfig.names())
        return cls(**d, config=DreamConfig(**{k: v for k, v in cfg.items() if k in known}))


# ------------------------------------------------------------------------------------ feature ranges


def parse_features(text: str, n_latents: int | None = None) -> list[int]:
    """``"3,17,42"``, ``"0-2303"`` or a mix (``"0-9,20,30-39"``) -> sorted feature ids.

    ValueError (one line) for a malformed item, an empty or reversed range, ranges that overlap or
    repeat a feature, or (with ``n_latents``) a feature outside ``0..n_latents-1``.
    """
    valid = f"valid are 0..{n_latents - 1}" if n_latents else "valid is e.g. 3,17,42 or 0-2303"
    items = [t.strip() for t in str(text).split(",")]
    if not any(items):
        raise ValueError(f"empty feature list {text!r}: {valid}")
    spans: list[tuple[int, int, str]] = []
    for item in items:
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", item)
        if not m:
            raise ValueError(f"feature range {item!r} is not N or A-B with integers >= 0: {valid}")
        lo, hi = int(m[1]), int(m[2] if m[2] is not None else m[1])
        if hi < lo:
            raise ValueError(f"feature range {item!r} is empty ({hi} < {lo}): {valid}")
        spans.append((lo, hi, item))
    spans.sort()
    for (_, hi1, a), (lo2, _, b) in zip(spans, spans[1:]):
        if lo2 <= hi1:
            raise ValueError(f"feature ranges {a!r} and {b!r} overlap at {lo2}: give each feature once")
    if n_latents is not None and spans[-1][1] >= n_latents:
        raise ValueError(f"feature {spans[-1][1]} ({spans[-1][2]!r}) is out of range: {valid}")
    return [f for lo, hi, _ in spans for f in range(lo, hi + 1)]


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


def fingerprint(spec: SweepSpec) -> dict[str, Any]:
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
    def open(cls, out_dir: str | Path, spec: SweepSpec, *, resume: bool = False) -> SweepStore:
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

    def spec(self) -> SweepSpec:
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


# ------------------------------------------------------------------------------------ running


_LOADED: dict[tuple, tuple] = {}


def load_spec(spec: SweepSpec, check: bool = True):
    """``(model, tokenizer, sae)`` for ``spec``, loaded once per process (Ray workers reuse them)."""
    key = (spec.model, spec.sae, spec.device, spec.dtype)
    if key not in _LOADED:
        from .models import load_model
        from .saes import check_site, load_sae

        model, tok = load_model(spec.model, device=spec.device, dtype=spec.dtype)
        sae = load_sae(spec.sae, model=model)
        if check:
            fvu = check_site(model, tok, sae)
            log.info("SAE %s at %s: FVU %.3f on check texts", sae.name, sae.site.hook_name, fvu)
        _LOADED.clear()
        _LOADED[key] = (model, tok, sae)
    return _LOADED[key]


def run_group(spec: SweepSpec, features: list[int], loaded=None) -> list[tuple[int, Any]]:
    """Dream ``features`` together; ``(feature, DreamResult | FeatureError)`` per feature."""
    from .multi import dream_many
    from .multi_objective import MultiLatentObjective

    model, tok, sae = loaded or load_spec(spec)
    obj = MultiLatentObjective(sae, features, spec.kind, spec.reduce, spec.norm_guard)
    results = dream_many(model, tok, obj, replace(spec.config, progress=False), errors="record")
    return list(zip(features, results))


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class SweepOutcome:
    """What a sweep run did: features asked, already done before, written now, failed groups."""

    requested: int
    skipped: int
    written: int
    errors: int
    failed: list[tuple[list[int], str]] = field(default_factory=list)
    seconds: float = 0.0


def run_sweep(
    spec: SweepSpec,
    features: list[int],
    out_dir: str | Path,
    *,
    resume: bool = False,
    backend: str = "local",
    address: str | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> SweepOutcome:
    """Dream ``features`` into ``out_dir`` (see module doc); Ctrl-C keeps every finished feature.

    ``backend='ray'``: ``address`` of a running cluster (None: start a local one with ``workers`` CPUs).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: valid are {', '.join(BACKENDS)}")
    if backend == "ray":
        from .sweep_ray import import_ray

        import_ray()  # fail in one line before any work when Ray is missing
    if not features:
        raise ValueError("no features to sweep: valid is e.g. 0-2303")
    d_sae = sae_width(spec.sae)
    if max(features) >= d_sae or min(features) < 0:
        bad = max(features) if max(features) >= d_sae else min(features)
        raise ValueError(f"feature {bad} is out of range for SAE {spec.sae!r}: valid are 0..{d_sae - 1}")
    store = SweepStore.open(out_dir, spec, resume=resume)
    t0 = time.time()
    try:
        done = store.done()
        todo = [f for f in features if f not in done]
        groups = [todo[i : i + spec.group_size] for i in range(0, len(todo), spec.group_size)]
        outcome = SweepOutcome(len(features), len(features) - len(todo), 0, 0)
        log.info(
            "sweep: %d features, %d already done, %d groups", len(features), outcome.skipped, len(groups)
        )
        bar = tqdm(
            total=len(features),
            initial=outcome.skipped,
            desc="sweep",
            unit="feature",
            disable=not progress,
            dynamic_ncols=True,
        )
        try:
            if backend == "local":
                _run_local(spec, groups, store, bar, outcome)
            else:
                from .sweep_ray import run_ray

                run_ray(spec, groups, store, bar, outcome, address=address, workers=workers)
        finally:
            bar.close()
    finally:
        store.close()
    outcome.seconds = time.time() - t0
    return outcome


def _record(
    store: SweepStore, results: list[tuple[int, Any]], bar, outcome: SweepOutcome, worker: str
) -> bool:
    """Store a group's results; False when the group was interrupted (only its finished features kept)."""
    complete = [(f, r) for f, r in results if isinstance(r, FeatureError) or not r.interrupted]
    outcome.written += store.put(complete, worker)
    outcome.errors += sum(isinstance(r, FeatureError) for _, r in complete)
    bar.update(len(complete))
    return len(complete) == len(results)


def _run_local(
    spec: SweepSpec, groups: list[list[int]], store: SweepStore, bar, outcome: SweepOutcome
) -> None:
    if not groups:
        return
    loaded = load_spec(spec)
    for group in groups:
        if not _record(store, run_group(spec, group, loaded), bar, outcome, worker_name()):
            raise KeyboardInterrupt
