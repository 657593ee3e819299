"""The feature card's own HTML parts: its style sheet, logit tables, steering scales and collapsed contexts.

Every string that may come from a tokenizer, a corpus or a result file goes through :func:`html.escape`
(token spans and number formats: :mod:`.html_parts`, shared with the notebook views).
"""

from __future__ import annotations

import html

from .html_parts import show_token, token_spans

# The card's whole style sheet (inlined in its <style>).
CSS = """
*{box-sizing:border-box}body{margin:0;background:#f8fafc;color:#0f172a;font:14px/1.5 system-ui,-apple-system,
"Segoe UI",Roboto,"DejaVu Sans",sans-serif}main{max-width:1080px;margin:0 auto;padding:24px}
header{background:#0f172a;color:#f8fafc;border-radius:12px;padding:20px 24px;margin-bottom:18px}
h1{margin:0 0 4px;font-size:26px}h2{font-size:17px;margin:0 0 10px}.sub{color:#cbd5e1}.sub code{color:#fde68a}
.chips{display:flex;flex-wrap:wrap;gap:8px;margin-top:14px}.chip{background:#1e293b;border-radius:8px;padding:6px 12px}
.chip b{display:block;font-size:17px;color:#fff}.chip span{font-size:11px;color:#94a3b8;text-transform:uppercase}
section{background:#fff;border:1px solid #e2e8f0;border-radius:12px;padding:16px 20px;margin-bottom:16px}
.row{display:flex;gap:12px;align-items:baseline;padding:6px 0;border-bottom:1px solid #f1f5f9}
.row:last-child{border-bottom:0}.val{flex:0 0 86px;text-align:right;font:600 13px ui-monospace,"DejaVu Sans Mono",monospace}
.lbl{flex:0 0 86px;color:#64748b;font-size:12px}.text{flex:1;font:13px/1.9 ui-monospace,"DejaVu Sans Mono",monospace;
white-space:pre-wrap;word-break:break-word}.tok{border-radius:3px;padding:1px 0}.peak{outline:2px solid #9a3412;
outline-offset:0}.ctl{color:#64748b}.peak .ctl{color:#111827;font-weight:700}.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:14px}
figure{margin:0}figure img{width:100%;height:auto;border:1px solid #f1f5f9;border-radius:8px}
figcaption{font-weight:600;margin-bottom:4px}.note{color:#64748b;font-size:12px}.cols{display:grid;
grid-template-columns:1fr 1fr;gap:20px}table{border-collapse:collapse;width:100%}td{padding:3px 6px;
border-bottom:1px solid #f1f5f9;font:13px ui-monospace,"DejaVu Sans Mono",monospace}td.num{text-align:right;width:80px}
.bar{height:10px;border-radius:5px}.steer td:first-child{width:130px;
text-align:right;font-weight:600;white-space:nowrap}.steer small{display:block;font-weight:400;color:#64748b}
footer{color:#94a3b8;font-size:12px;text-align:center;padding:8px}
details.ctx summary{cursor:pointer}details.ctx[open] summary{margin-bottom:4px}details.ctx .whole{padding:4px 8px;
background:#f8fafc;border-radius:6px}.cut{border-left:2px dashed #64748b;margin:0 2px}
"""


def alpha_multiple(alpha: float, dataset_max: float | None) -> str:
    """A steering scale as a multiple of the dataset max (empty without one)."""
    if not alpha or not dataset_max or dataset_max <= 0:
        return ""
    return f"<small>{alpha / dataset_max:.2g} \u00d7 dataset max</small>"


def logit_table(rows: list, rgb: str) -> str:
    """Rows with ``token`` and ``value`` (:class:`~.tracing.TokenScore`) as a table with a bar per value in
    colour ``rgb``."""
    top = max((abs(r.value) for r in rows), default=1.0) or 1.0
    body = "".join(
        f'<tr><td>{show_token(r.token)}</td><td class="num">{r.value:+.3g}</td><td style="width:40%"><div class="bar" '
        f'style="width:{100 * abs(r.value) / top:.0f}%;background:rgb({rgb})"></div></td></tr>'
        for r in rows
    )
    return f"<table>{body}</table>"


def context_spans(
    tokens: list[str], acts: list[float], vmax: float, peak: int, start: int, label: str
) -> str:
    """A dataset example whose context is collapsed: ``tokens[start:]`` (from the minimal context on, with
    the tokens after the ``peak``) visible in a ``<summary>``, preceded by an ellipsis; the whole context,
    with a dashed mark where ``start`` is, behind the ``<details>``. ``start <= 0``: the tokens as they are.
    ``label``: the ellipsis' tooltip. Every token is escaped by :func:`token_spans`."""
    start = max(0, min(start, peak))
    if start == 0:
        return token_spans(tokens, acts, vmax, peak)
    shown = token_spans(tokens[start:], acts[start:], vmax, peak - start)
    whole = (
        token_spans(tokens[:start], acts[:start], vmax)
        + '<span class="cut" title="the shown context starts here"></span>'
        + shown
    )
    tip = html.escape(label, quote=True)
    return (
        f'<details class="ctx"><summary><span class="ctl" title="{tip}">\u2026</span>{shown}</summary>'
        f'<div class="whole">{whole}</div></details>'
    )
