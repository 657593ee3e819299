"""The notebook views (``_repr_html_``) of a dream result, a sweep summary and a feature card: built by hand
(no model), every token escaped, the numbers a reader looks for present."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from featuredream.engine.config import DreamConfig
from featuredream.engine.records import HistoryRow
from featuredream.engine.results import DreamResult, Prompt
from featuredream.observe.card import CardData
from featuredream.observe.card_html import render_card
from featuredream.sweep.store import SweepRow
from featuredream.sweep.summary import SweepSummary

EVIL = "<script>alert('x')</script>"


def _result(**kw) -> DreamResult:
    best = Prompt(
        text=EVIL + " cats",
        ids=[1, 2],
        activation=7.25,
        xe=4.5,
        tokens=[EVIL, " cats"],
        token_acts=[50.0, 7.25],
    )
    args = dict(
        best=best,
        buffer=[best],
        history=[
            HistoryRow(i, None, None, None, a, 4.5, -a, True, 2, 8, 0.5, i + 1.0)
            for i, a in enumerate([1.0, 3.0, 7.25])
        ],
        frontier=[],
        config=DreamConfig(),
        objective="sae/encoder",
        model="m",
        sae="default",
        feature=102,
        seed=0,
        wall_time=1.5,
        start="x",
        feasible=True,
        dataset_max=5.0,
        xe_limit=6.5,
        stop_reason="iters",
    )
    args.update(kw)
    return DreamResult(**args)


class _Text(HTMLParser):
    """The visible text and the tags of an HTML fragment (scripts would be tags, not text)."""

    def __init__(self):
        super().__init__()
        self.text, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def _parse(page: str) -> _Text:
    p = _Text()
    p.feed(page)
    return p


def test_dream_result_html_shows_the_escaped_tokens_ratio_xe_and_trajectory():
    page = _result()._repr_html_()
    p = _parse(page)
    text = "".join(p.text)
    assert "script" not in p.tags and "<script" not in page.lower()
    assert EVIL in text  # shown as text, escaped in the source
    assert "&lt;script&gt;" in page and " cats" in text
    assert "7.250" in text and "1.45\u00d7 dataset max" in text  # 7.25 / 5.0
    assert "4.50 \u2264 6.50" in text and "feature 102" in text
    assert "svg" in p.tags and "polyline" in p.tags  # the trajectory
    # the scored token is full colour (7.25 >= dataset max) and outlined, though the first token (an
    # attention sink's 50.0) is higher: the scale is the dataset max / the score, not the largest token
    assert re.search(r'class="tok peak" style="background:rgba\(234,88,12,1.00\)"', page)


def test_dream_result_html_without_statistics_or_ceiling_and_infeasible():
    page = _result(dataset_max=None, xe_limit=None, feasible=False, history=[])._repr_html_()
    text = "".join(_parse(page).text)
    assert "n/a (no dataset statistics)" in text and "(no ceiling)" in text and "no (XE above" in text
    assert "<svg" not in page  # one or no iteration: no line
    over = _result(xe_limit=4.0)._repr_html_()
    assert "4.50 &gt; 4.00" in over


def test_sweep_summary_html():
    rows = [
        SweepRow(1, "ok", 1.0, 3.0, 1.0, 1.5, True, "fine", None, 1.0),
        SweepRow(2, "ok", 1.0, 4.0, 1.0, 0.25, True, EVIL, None, 1.0),
        SweepRow(3, "ok", 1.0, 9.0, 1.0, 2.0, False, "loud", None, 1.0),
        SweepRow(4, "error", None, None, None, None, False, None, EVIL, None),
    ]
    fp = dict(sae=EVIL, model="m", objective="sae/encoder", reduce="last", config={"xe_max": 6.5})
    page = SweepSummary(rows, fp)._repr_html_()
    p = _parse(page)
    text = "".join(p.text)
    assert "script" not in p.tags and page.count("&lt;script&gt;") == 3  # the SAE name, a text, an error
    assert "4 stored, 3 dreamed, 1 failed" in text
    assert "33.3%" in text  # 1 of 3 feasible with ratio >= 1
    worst = re.findall(r'<tr><td class="num">(\d+)</td>', page)
    assert worst == ["3", "2", "1"]  # infeasible first, then by ratio


def test_card_is_a_str_that_shows_in_an_iframe():
    d = CardData(
        feature=1,
        sae_name=EVIL,
        site="blocks.1.hook_resid_post",
        model="m",
        d_sae=8,
        dataset_max=1.0,
        fire_rate=0.1,
        fvu=0.1,
        examples=[([EVIL, "x"], 1, [0.5, 2.0], 2.0)],
        dreams=[],
        dream_summary=None,
        logits_top=[],
        logits_bottom=[],
        logits_note="n",
        steering=[],
        steer_prompt="p",
        figures={},
    )
    page = render_card(d)
    assert isinstance(page, str) and page.startswith("<!DOCTYPE html>")
    view = page._repr_html_()
    p = _parse(view)
    assert p.tags == ["iframe"]  # the whole page is in srcdoc, its CSS stays inside the frame
    srcdoc = re.search(r'srcdoc="([^"]*)"', view).group(1)
    import html

    assert html.unescape(srcdoc) == page and "&amp;lt;script&amp;gt;" in srcdoc
    assert re.search(r"<iframe [^>]*\bsandbox\b", view)  # no script could run even if one got in
