"""The prose reference corpus: reST reduced to running text, pinned documents, half-and-half windows."""

from __future__ import annotations

import torch

from featuredream.text import prose

RST = """
.. include:: header.rst

A Title
=======

:Author: Someone

The *first* paragraph has **bold**, ``literal`` and `a link <https://x.org>`_ text,
a :role:`reference` and a target_ spread over
two lines.

.. note:: A directive is dropped.

::

    code is dropped

- A list item with enough words to count as running
  text of the documentation.

short one
"""


def test_rst_running_text_keeps_paragraphs_without_markup():
    out = prose.rst_running_text(RST).split("\n\n")
    assert out == [
        "The first paragraph has bold, literal and a link text, a reference and a target spread over two lines.",
        "A list item with enough words to count as running text of the documentation.",
    ]


def test_prose_documents_are_the_pinned_packages_text():
    news, docs = prose.prose_documents()
    assert len(news) == 350 and len(docs) == 54  # gensim 4.4.0's Lee corpus, docutils 0.23.1's docs
    assert news[0].startswith("Hundreds of people have been forced to vacate their homes")
    paragraphs = [p for d in docs for p in d.split("\n\n")]
    assert not any(p.startswith((".. ", ":Author:", "===")) for p in paragraphs)  # no directive/field/title
    assert prose.prose_documents() == (news, docs)


def test_prose_windows_are_half_news_half_documentation(tiny_tokenizer):
    w = prose.prose_windows(tiny_tokenizer, ctx=32, n=40, seed=1)
    assert w.shape == (40, 32) and w.dtype == torch.int64
    news, docs = prose.prose_documents()
    texts = [tiny_tokenizer.decode(x.tolist()) for x in w]
    assert all(any(t in d for d in news) for t in texts[:20])
    assert all(any(t in d for d in docs) for t in texts[20:])
    assert torch.equal(w, prose.prose_windows(tiny_tokenizer, ctx=32, n=40, seed=1))
