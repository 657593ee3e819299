"""Escaped HTML parts shared by the feature card (:mod:`.card_html`) and the notebook views (``_repr_html_`` of
:class:`~featuredream.engine.results.DreamResult` (:mod:`.result_view`), sweep summaries and cards).

Every string that may come from a tokenizer, a corpus or a result file goes through :func:`html.escape`, so
a dreamed ``<script>`` token shows as text. Notebook views get :data:`INLINE_CSS`, whose rules all sit under
``.fd-view`` so they never restyle the notebook around them; a whole page (the card) shows in an
``<iframe srcdoc>`` (:class:`HTMLPage`), which keeps its style sheet inside.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

ACT_RGB, NEG_RGB = "234,88,12", "37,99,235"  # activation (orange) and negative (blue) colours
_DOT = "\u00b7"

INLINE_CSS = (
    "<style>.fd-view{font:13px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#0f172a;"
    "max-width:960px}.fd-view h4{margin:4px 0 6px;font-size:15px}.fd-view .sub{color:#64748b;font-size:12px}"
    ".fd-view .text{font:13px/1.9 ui-monospace,'DejaVu Sans Mono',monospace;white-space:pre-wrap;"
    "word-break:break-word;padding:6px 8px;border:1px solid #e2e8f0;border-radius:6px;margin:6px 0}"
    ".fd-view .tok{border-radius:3px;padding:1px 0}.fd-view .peak{outline:2px solid #9a3412}"
    ".fd-view .ctl{color:#64748b}.fd-view table{border-collapse:collapse;margin:4px 0}"
    ".fd-view td,.fd-view th{padding:2px 8px;border-bottom:1px solid #f1f5f9;text-align:left;"
    "vertical-align:top}.fd-view td.num{text-align:right;font-variant-numeric:tabular-nums}"
    ".fd-view .bad{color:#b91c1c}.fd-view .good{color:#15803d}.fd-view code{white-space:pre-wrap}</style>"
)


def show_token(token: str) -> str:
    """A token as escaped HTML, with newlines, tabs and other control characters made visible."""
    out = []
    for ch in token:
        if ch == "\n":
            out.append('<span class="ctl">\u21b5</span>')
        elif ch == "\t":
            out.append('<span class="ctl">\u2192</span>')
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f'<span class="ctl">\\x{ord(ch):02x}</span>')
        else:
            out.append(html.escape(ch))
    return "".join(out) or '<span class="ctl">\u2205</span>'


def token_spans(tokens: list[str], acts: list[float], vmax: float, peak: int | None = None) -> str:
    """Tokens as ``<span>`` highlighted by activation (orange, full at ``vmax``); the value is in the tooltip."""
    parts = []
    for i, (t, a) in enumerate(zip(tokens, acts)):
        a = float(a) if math.isfinite(a) else 0.0
        alpha = max(0.0, min(a / vmax, 1.0))  # negative pre-activations do not fire: no colour
        cls = "tok peak" if i == peak else "tok"
        title = html.escape(f"{t!r}: {a:.3f}", quote=True)
        visible = t.strip(" ") or (i != peak and alpha < 0.15)  # a highlighted run of spaces shows as dots
        shown = show_token(t) if visible else f'<span class="ctl">{_DOT * len(t)}</span>'
        style = f"background:rgba({ACT_RGB},{alpha:.2f})"
        parts.append(f'<span class="{cls}" style="{style}" title="{title}">{shown}</span>')
    return "".join(parts)


def chip(label: str, value: str) -> str:
    """One header chip: a small label over a value (both escaped)."""
    return f'<div class="chip"><span>{html.escape(label)}</span><b>{html.escape(value)}</b></div>'


def fmt_value(v: float | None, spec: str = ".3f") -> str:
    """A number formatted with ``spec``; ``n/a`` for None or a non-finite float."""
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def scored_index(acts: list[float], value: float) -> int | None:
    """Index of the token whose activation is the prompt's score (the last one for ``last``)."""
    if not acts or not math.isfinite(value):
        return None
    return min(reversed(range(len(acts))), key=lambda i: abs(acts[i] - value))


def sparkline(values: Sequence[float | None], ref: float | None = None, w: int = 240, h: int = 48) -> str:
    """An inline SVG line of ``values`` (e.g. the best activation per iteration), with a dashed line at
    ``ref`` (e.g. the dataset max) when given; empty without two finite values. Numbers only: no text."""
    pts = [(i, float(v)) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    if len(pts) < 2:
        return ""
    ys = [v for _, v in pts] + ([ref] if ref is not None and math.isfinite(ref) else [])
    lo, hi = min(ys), max(ys)
    span, last = (hi - lo) or 1.0, max(pts[-1][0], 1)

    def xy(i: float, v: float) -> str:
        return f"{2 + (w - 4) * i / last:.1f},{h - 2 - (h - 4) * (v - lo) / span:.1f}"

    line = " ".join(xy(i, v) for i, v in pts)
    out = [f'<svg width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img">']
    if ref is not None and math.isfinite(ref):
        y = xy(0, ref).split(",")[1]
        out.append(f'<line x1="0" x2="{w}" y1="{y}" y2="{y}" stroke="#111827" stroke-dasharray="4 3"/>')
    out.append(f'<polyline points="{line}" fill="none" stroke="rgb({ACT_RGB})" stroke-width="2"/></svg>')
    return "".join(out)


def table(rows: Sequence[tuple[str, str]]) -> str:
    """A two-column ``<table>`` of (label, HTML value); the labels are escaped, the values are not."""
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def inline_view(body: str) -> str:
    """``body`` wrapped for a notebook output: the scoped style sheet and a ``.fd-view`` box."""
    return f'{INLINE_CSS}<div class="fd-view">{body}</div>'


class HTMLPage(str):
    """A whole HTML page (a ``str``, so it is written and compared as before) that shows inline in Jupyter:
    in an ``<iframe srcdoc>``, so its own CSS stays inside the frame and the notebook keeps its style."""

    height = 720

    def _repr_html_(self) -> str:
        return (
            f'<iframe srcdoc="{html.escape(str(self), quote=True)}" style="width:100%;height:{self.height}px;'
            'border:1px solid #e2e8f0;border-radius:8px" sandbox></iframe>'
        )


def judge_cell(judge: dict | None) -> str:
    """The judge's percentile among natural prose (``n/a`` without a judge)."""
    if not judge:
        return "n/a"
    pct = judge.percentile
    if pct is None or not math.isfinite(pct):
        return "n/a"
    cls = "good" if pct <= 60 else ("bad" if pct > 95 else "")
    tip = html.escape(f"{judge.judge}: XE {judge.xe:.2f} at {judge.tokens} tokens", quote=True)
    return f"<span class='{cls}' title='{tip}'>{pct:.0f}</span>"


def prompt_rows_table(
    first: str, rows: Sequence[tuple[str, Any, str, dict | None]], ratio_of, vmax: float
) -> str:
    """A table of prompts: ``first`` (the label column's heading), the prompt's tokens coloured by
    activation, activation, ratio to the dataset max (``ratio_of(prompt)``), an XE cell (HTML) and the
    judge's percentile among natural prose. ``rows``: (label, prompt, XE cell, judge); everything shown is
    escaped (the XE cell is made by the caller from numbers)."""
    if not rows:
        return ""
    head = "".join(f"<th>{h}</th>" for h in (first, "prompt", "activation", "ratio", "XE", "judge pct"))
    body = []
    for label, p, xe, judge in rows:
        acts = [float(a) for a in p.token_acts]
        text = (
            token_spans(p.tokens, acts, vmax)
            if p.tokens and len(acts) == len(p.tokens)
            else html.escape(p.text)
        )
        cells = [
            f"<td>{html.escape(label)}",
            f"<td><span class='text'>{text}</span>",
            f"<td class='num'>{fmt_value(p.activation, '.2f')}",
            f"<td class='num'>{fmt_value(ratio_of(p), '.2f')}",
            f"<td class='num'>{xe}",
            f"<td class='num'>{judge_cell(judge)}",
        ]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table class='ladder'><tr>{head}</tr>{''.join(body)}</table>"


def ladder_table(rungs: Sequence, ratio_of, vmax: float) -> str:
    """The fluency ladder (:func:`prompt_rows_table`): per rung its ceiling, prompt, activation, ratio, XE
    against the rung's ceiling (red: nothing met it) and judge percentile. Rungs are read by attribute
    (:class:`~featuredream.engine.results.Rung`)."""
    rows = []
    for g in rungs:
        xe = fmt_value(g.prompt.xe, ".2f") + (
            f" ({fmt_value(g.xe_limit, '.2f')})" if g.xe_limit is not None else ""
        )
        rows.append((g.ceiling, g.prompt, xe if g.feasible else f"<span class='bad'>{xe}</span>", g.judge))
    return prompt_rows_table("ceiling", rows, ratio_of, vmax)


def dreams_table(dreams: Sequence, ratio_of, vmax: float) -> str:
    """The distinct dreams (:func:`prompt_rows_table`): per dream its number (and ``below floor`` when it did
    not reach it), prompt, activation, ratio, XE with its excess over natural text of its length, and judge
    percentile. Dreams are read by attribute (:class:`~featuredream.engine.results.Dream`)."""
    rows = []
    for i, d in enumerate(dreams, 1):
        xe = fmt_value(d.prompt.xe, ".2f") + (f" ({d.xe_excess:+.2f})" if d.xe_excess is not None else "")
        label = f"#{i}" + ("" if d.above_floor else " (below floor)")
        rows.append((label, d.prompt, xe, d.judge))
    return prompt_rows_table("dream", rows, ratio_of, vmax)
