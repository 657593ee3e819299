"""The plain-prose reference corpus: what "natural text" means for ``--xe-max pNN`` and the fluency judge.

Held out from SAE training (the default SAE corpus is Shakespeare plus pydoc, :mod:`.corpus`), offline,
pinned and the same on every machine:

- **news**: the 350 Australian Broadcasting Corporation news articles of the Lee corpus, which the
  ``gensim==4.4.0`` wheel ships as test data (``lee_background.cor``, ``lee.cor``; one article per line);
- **documentation**: the user and reference documentation of ``docutils==0.23.1`` (the ``docs/`` tree
  of its source distribution), reduced to its running text: top-level paragraphs and list items, reflowed
  to one line each, inline markup removed; titles, directives, literal blocks, tables, field lists and
  link targets dropped.

Both packages are fetched with ``pip download --no-deps`` into the cache (never installed).
:func:`prose_windows` draws the same number of 64-token windows from each half with a fixed seed: the
windows behind every model's natural-text XE table (:mod:`.xe_table`) and the judge's reference
(:mod:`.judge`).
"""

from __future__ import annotations

import functools
import logging
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import torch

from ..models.loading import cache_dir
from .corpus import make_windows

log = logging.getLogger(__name__)

NEWS_SPEC = "gensim==4.4.0"
DOCS_SPEC = "docutils==0.23.1"
NEWS_FILES = ("gensim/test/test_data/lee_background.cor", "gensim/test/test_data/lee.cor")
PROSE_CTX = 64
PROSE_WINDOWS = 640
"""Windows of :data:`PROSE_CTX` tokens in the reference (half news, half documentation): 41k tokens."""


def fetch_package(spec: str, pattern: str, *, source: bool = False) -> Path:
    """The file of pinned package ``spec`` (a wheel, or with ``source`` its sdist) in the cache, fetched
    with ``pip download --no-deps`` the first time."""
    where = cache_dir() / "wheels"
    where.mkdir(parents=True, exist_ok=True)
    found = sorted(where.glob(pattern))
    if not found:
        kind = ["--no-binary", ":all:"] if source else ["--only-binary", ":all:"]
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", *kind, spec, "-d", str(where)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(where.glob(pattern))
        if not found:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"could not fetch {spec} for the prose corpus: {tail[0]}")
    return found[0]


def news_documents() -> list[str]:
    """The Lee corpus' news articles, one document each (file order)."""
    wheel = fetch_package(NEWS_SPEC, "gensim-4.4.0-*.whl")
    docs = []
    with zipfile.ZipFile(wheel) as zf:
        for name in NEWS_FILES:
            text = zf.read(name).decode("utf-8", errors="replace")
            docs += [line.strip() for line in text.splitlines() if len(line.split()) >= 20]
    return docs


_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+.:_])\1{2,}\s*$")
_INLINE = (
    (re.compile(r":[\w:.-]+:`([^`<]*?)(?:\s*<[^>]*>)?`"), r"\1"),  # :role:`text <target>` -> text
    (re.compile(r"``([^`]+)``"), r"\1"),  # ``literal``
    (re.compile(r"`([^`<]+?)\s*<[^>]*>`__?"), r"\1"),  # `text <url>`_
    (re.compile(r"`([^`]+)`_{0,2}"), r"\1"),  # `text`_ / `interpreted`
    (re.compile(r"\*\*([^*]+)\*\*"), r"\1"),
    (re.compile(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])"), r"\1"),
    (re.compile(r"\[[#*\w-]*\]_"), ""),  # footnote references
    (re.compile(r"(\w)__?(?=[\s.,;:)]|$)"), r"\1"),  # reference_ -> reference
    (re.compile(r"\s*\(quickref__\)"), ""),
    (re.compile(r"::$"), ":"),
)


def rst_running_text(text: str) -> str:
    """The running text of a reStructuredText document: unindented paragraphs and list items, one line
    each, inline markup removed (see the module doc); paragraphs separated by blank lines."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [ln for ln in block.splitlines() if ln.strip()]
        if not lines or lines[0].startswith((" ", "\t", "..", ":", "|", "+", "__", "=")):
            continue
        if any(_UNDERLINE.match(ln) for ln in lines) or lines[0][0] in "<>[":
            continue
        body = " ".join(ln.strip() for ln in lines)
        body = re.sub(r"^[-*+] ", "", body)
        for pat, rep in _INLINE:
            body = pat.sub(rep, body)
        body = re.sub(r"\s+", " ", body).strip()
        if len(body.split()) >= 8:
            out.append(body)
    return "\n\n".join(out)


def documentation_documents() -> list[str]:
    """docutils' documentation (``docs/**/*.rst``, sorted by path), running text only, one document each."""
    sdist = fetch_package(DOCS_SPEC, "docutils-0.23.1.tar.gz", source=True)
    docs = []
    with tarfile.open(sdist) as tf:
        names = sorted(m.name for m in tf.getmembers() if "/docs/" in m.name and m.name.endswith(".rst"))
        for name in names:
            raw = tf.extractfile(name).read().decode("utf-8", errors="replace")
            text = rst_running_text(raw)
            if len(text.split()) >= 50:
                docs.append(text)
    return docs


@functools.lru_cache(maxsize=1)
def _prose() -> tuple[tuple[str, ...], tuple[str, ...]]:
    news, docs = tuple(news_documents()), tuple(documentation_documents())
    log.info("prose corpus: %d news articles, %d documentation pages", len(news), len(docs))
    return news, docs


def prose_documents() -> tuple[list[str], list[str]]:
    """``(news, documentation)``: the reference corpus' two halves (made once per process)."""
    news, docs = _prose()
    return list(news), list(docs)


_WINDOWS: dict[tuple[int, int, int, int], tuple[object, torch.Tensor]] = {}
"""Prose windows made in this process, by (tokenizer id, ctx, n, seed): tokenizing the corpus takes seconds."""


def prose_windows(tok, ctx: int = PROSE_CTX, n: int = PROSE_WINDOWS, seed: int = 0) -> torch.Tensor:
    """``[n, ctx]`` int64: ``n // 2`` windows drawn (seeded) from the news and ``n - n // 2`` from the
    documentation, each a non-overlapping ``ctx``-token window of one document, in the tokenizer ``tok``
    (made once per tokenizer in a process)."""
    key = (id(tok), ctx, n, seed)
    if key not in _WINDOWS or _WINDOWS[key][0] is not tok:
        _WINDOWS[key] = (tok, _prose_windows(tok, ctx, n, seed))
    return _WINDOWS[key][1].clone()


def _prose_windows(tok, ctx: int, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for docs, want in zip(prose_documents(), (n // 2, n - n // 2)):
        wins, _ = make_windows(tok, docs, ctx)
        if len(wins) < want:
            raise ValueError(
                f"the prose corpus has {len(wins)} windows of {ctx} tokens: valid is n <= {len(wins)}"
            )
        parts.append(wins[torch.randperm(len(wins), generator=gen)[:want]])
    return torch.cat(parts)


def windows_text(tok, windows: torch.Tensor) -> list[str]:
    """The windows decoded (for a reader: what the reference looks like)."""
    return [tok.decode(w.tolist()) for w in windows]
