"""The notebook view of a :class:`~featuredream.engine.results.DreamResult` (its ``_repr_html_``): the best
prompt as token chips coloured by per-token activation, the activation and its ratio to the dataset max, XE
against its ceiling, feasibility, the fluency judge's percentile, the best activation per iteration as an
inline SVG line, and the fluency ladder (one row per ceiling).

Built from :mod:`.html_parts`, the card's escaped parts: every token and name is escaped. The engine sits
below this package, so :class:`DreamResult` reaches this view through
:func:`featuredream.engine.results.register_html_view` (called by ``featuredream.observe``'s import).
"""

from __future__ import annotations

import html
import math
from typing import Any

from .html_parts import (
    dreams_table,
    fmt_value,
    inline_view,
    judge_cell,
    ladder_table,
    scored_index,
    sparkline,
    table,
    token_spans,
)


def _xe_cell(xe: float, limit: float | None) -> str:
    if limit is None or not math.isfinite(limit):
        return f"{fmt_value(xe, '.2f')} <span class='sub'>(no ceiling)</span>"
    ok = math.isfinite(xe) and xe <= limit
    cls, op = ("good", "\u2264") if ok else ("bad", "&gt;")
    return f"<span class='{cls}'>{fmt_value(xe, '.2f')} {op} {fmt_value(limit, '.2f')}</span> (ceiling)"


def _headline(r: Any) -> str:
    """What the shown prompt is (escaped)."""
    if r.headline == "readable":
        return f"the most readable prompt reaching the floor ({fmt_value(r.floor)})"
    if r.floor is not None:
        return f"the most activating prompt (nothing reached the floor {fmt_value(r.floor)})"
    return "the most activating prompt"


def dream_result_html(r: Any) -> str:
    """HTML for a dream result ``r`` (a :class:`DreamResult`, read by attribute)."""
    e = html.escape
    best = r.best
    acts = [float(a) for a in best.token_acts]
    # full colour at the dataset max or the prompt's score: a first token's attention-sink value (often
    # 10x any other) would otherwise wash out the rest; tokens above it are clipped to full colour
    vmax = max(r.dataset_max or 0.0, best.activation if math.isfinite(best.activation) else 0.0)
    vmax = vmax if vmax > 0 else 1.0
    if best.tokens and len(acts) == len(best.tokens):
        prompt = token_spans(best.tokens, acts, vmax, scored_index(acts, best.activation))
    else:
        prompt = e(best.text)
    what = f"feature {r.feature}" if r.feature is not None else e(str(r.objective))
    sub = " \u00b7 ".join(
        e(str(x))
        for x in (
            r.objective,
            f"SAE {r.sae}" if r.sae else None,
            f"site {r.site}" if r.site else None,
            r.model,
        )
        if x
    )
    ratio = r.ratio
    ratio_s = "n/a (no dataset statistics)" if ratio is None else f"{ratio:.2f}\u00d7 dataset max"
    feas = (
        "<span class='good'>yes</span>"
        if r.feasible
        else "<span class='bad'>no (XE above its ceiling)</span>"
    )
    steps = [h.best_activation for h in r.history]
    stop = e(r.stop_reason or ("interrupted" if r.interrupted else ""))
    rows = [
        ("headline", _headline(r)),
        ("activation", fmt_value(best.activation)),
        ("dataset max", fmt_value(r.dataset_max)),
        ("ratio", ratio_s),
        ("XE (nats/token)", _xe_cell(best.xe, r.xe_limit)),
        ("feasible", feas),
        (
            "judge percentile",
            judge_cell(r.judge) + " <span class='sub'>(among natural prose; 50 = typical)</span>",
        ),
        ("iterations", f"{len(r.history)}" + (f" (stopped: {stop})" if stop else "")),
        ("time", f"{fmt_value(r.wall_time, '.1f')} s, {r.n_evaluated} prompts evaluated"),
    ]
    line = sparkline(steps, r.dataset_max)
    if line:
        note = "best activation per iteration" + (" (dashed: dataset max)" if r.dataset_max else "")
        rows.append(("trajectory", f"{line}<div class='sub'>{note}</div>"))
    ladder = ladder_table(r.ladder, r.ratio_of, vmax)
    ladder = f"<h4>Fluency ladder</h4>{ladder}" if ladder else ""
    dreams = dreams_table(r.dreams, r.ratio_of, vmax) if len(r.dreams) > 1 else ""
    dreams = f"<h4>Distinct dreams</h4>{dreams}" if dreams else ""
    return inline_view(
        f"<h4>Dream of {what}</h4><div class='sub'>{sub}</div><div class='text'>{prompt}</div>{table(rows)}"
        + dreams
        + ladder
    )
