"""Sweep summary: the dreamed / dataset-max ratio distribution, the worst features, the fraction that beat
the dataset maximum; printed, plotted (matplotlib, as :mod:`featuredream.observe.figures`) and written as
an HTML index that links each feature to its card (``cards/feature_N.html``) when one exists.

Every string in the index that came from a record (dreamed texts, error messages, names) goes through
:func:`html.escape`.
"""

from __future__ import annotations

import html
import logging
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine.results import write_atomic
from ..observe.figures import new_figure, png_data_uri
from ..observe.html_parts import fmt_value, inline_view, table
from .store import SweepRow, SweepStore

log = logging.getLogger(__name__)

CARDS_DIR = "cards"


@dataclass
class SweepSummary:
    """Counts and the ratio distribution of one store. ``rows``: every record's summary (:class:`SweepRow`)."""

    rows: list[SweepRow]
    fingerprint: dict[str, Any]

    @property
    def ok(self) -> list[SweepRow]:
        return [r for r in self.rows if r.ok]

    @property
    def errors(self) -> list[SweepRow]:
        return [r for r in self.rows if not r.ok]

    @property
    def ratios(self) -> list[float]:
        return [r.ratio for r in self.ok if r.ratio is not None and math.isfinite(r.ratio)]

    @property
    def beat_fraction(self) -> float | None:
        """Share of features with a ratio whose feasible dream reached their dataset maximum."""
        rows = [r for r in self.ok if r.ratio is not None]
        if not rows:
            return None
        return sum(1 for r in rows if r.ratio >= 1 and r.feasible) / len(rows)

    @property
    def readable_fraction(self) -> float | None:
        """Share of dreamed features whose headline is the most readable prompt above the floor (None: no
        record says, e.g. a sweep with ``goal='max'`` or from an older featuredream)."""
        known = [r for r in self.ok if r.headline is not None]
        return sum(r.headline == "readable" for r in known) / len(known) if known else None

    @property
    def judge_pcts(self) -> list[float]:
        """The fluency judge's percentiles of the dreamed prompts (empty without a judge)."""
        return [r.judge_pct for r in self.ok if r.judge_pct is not None and math.isfinite(r.judge_pct)]

    def worst(self, n: int) -> list[SweepRow]:
        """The ``n`` features with the lowest ratio; infeasible ones (XE above ``xe_max``) rank first, as if
        their ratio were -inf, whatever ratio their dream reached."""
        rows = [r for r in self.ok if r.ratio is not None]
        return sorted(rows, key=lambda r: (r.ratio if r.feasible else -math.inf, r.feature))[:n]

    def _repr_html_(self) -> str:
        return summary_html(self)


def summary_html(s: SweepSummary, n_worst: int = 10) -> str:
    """Jupyter's inline view of a summary: counts, the ratio quantiles, the share that beat the dataset
    maximum, the worst features and the first failures (every record string escaped)."""
    e = html.escape
    fp = s.fingerprint
    beat = s.beat_fraction
    rows = [
        ("features", f"{len(s.rows)} stored, {len(s.ok)} dreamed, {len(s.errors)} failed"),
        ("dreamed / dataset max", e(_quantiles(s.ratios)) if s.ratios else "n/a (no dataset statistics)"),
        ("beat the dataset max", "n/a" if beat is None else f"{100 * beat:.1f}% (ratio ≥ 1, feasible)"),
        ("judge percentile", e(_judge_line(s.judge_pcts))),
    ]
    worst = "".join(
        f'<tr><td class="num">{w.feature}</td><td class="num">{fmt_value(w.ratio, ".2f")}</td>'
        f'<td class="num{"" if w.feasible else " bad"}">{fmt_value(w.xe, ".2f")}</td>'
        f"<td><code>{e(repr(w.text))}</code></td></tr>"
        for w in s.worst(n_worst)
    )
    body = [
        f"<h4>Sweep of {e(str(fp.get('sae')))}</h4><div class='sub'>{e(str(fp.get('model')))} · "
        f"{e(str(fp.get('objective')))} · reduce {e(str(fp.get('reduce')))} · xe_max "
        f"{e(str(fp.get('config', {}).get('xe_max')))}</div>",
        table(rows),
    ]
    if worst:
        body.append(
            "<b>worst features</b> <span class='sub'>(red XE: infeasible)</span><table><tr><th>feature</th>"
            f"<th>ratio</th><th>XE</th><th>dreamed prompt</th></tr>{worst}</table>"
        )
    body += [f"<div class='bad'>failed {r.feature}: {e(str(r.error))}</div>" for r in s.errors[:n_worst]]
    return inline_view("".join(body))


def summarize(out_dir: str | Path) -> SweepSummary:
    store = SweepStore.read(out_dir)
    try:
        return SweepSummary(store.rows(), store.meta("fingerprint"))
    finally:
        store.close()


def _quantiles(v: list[float]) -> str:
    if len(v) < 2:
        return ", ".join(f"{x:.2f}" for x in v)
    q = statistics.quantiles(v, n=10, method="inclusive")
    return f"p10 {q[0]:.2f}  median {statistics.median(v):.2f}  p90 {q[-1]:.2f}"


def text_histogram(ratios: list[float], bins: int = 10, width: int = 40) -> list[str]:
    """A text histogram of ratios, one line per bin from 0 to max(2, max ratio)."""
    if not ratios:
        return []
    hi = max(2.0, max(ratios))
    lo = min(0.0, min(ratios))
    step = (hi - lo) / bins
    counts = [0] * bins
    for r in ratios:
        counts[min(bins - 1, int((r - lo) / step))] += 1
    top = max(counts)
    return [
        f"  {lo + i * step:5.2f}-{lo + (i + 1) * step:5.2f} {c:6d} {'#' * round(width * c / top)}"
        for i, c in enumerate(counts)
    ]


def format_summary(s: SweepSummary, n_worst: int = 20) -> str:
    """The printed summary."""
    fp = s.fingerprint
    lines = [
        f"sweep of {fp['sae']} on {fp['model']} ({fp['objective']}, reduce={fp['reduce']}, "
        f"xe_max={fp['config'].get('xe_max')})",
        f"features: {len(s.rows)} stored, {len(s.ok)} dreamed, {len(s.errors)} failed",
    ]
    r = s.ratios
    if r:
        beat = s.beat_fraction
        lines += [
            f"dreamed / dataset max: {_quantiles(r)}  (over {len(r)} features with statistics)",
            f"beat the dataset maximum (ratio >= 1, feasible): {100 * beat:.1f}%",
            "ratio distribution:",
            *text_histogram(r),
        ]
        if s.readable_fraction is not None:
            lines.append(f"headline above the floor (most readable): {100 * s.readable_fraction:.1f}%")
        if s.judge_pcts:
            lines.append(f"judge percentile among natural prose: {_judge_line(s.judge_pcts)}")
        worst = s.worst(n_worst)
        if worst:
            lines.append(f"worst {len(worst)} features:")
            for w in worst:
                lines.append(
                    f"  {w.feature:7d}  ratio {w.ratio:6.2f}  XE {w.xe:6.2f}"
                    + ("" if w.judge_pct is None else f"  judge {w.judge_pct:3.0f}")
                    + f"{'' if w.feasible else ' (infeasible)'}  {w.text!r}"
                )
                lines += [f"{'':11}dream {d.text!r}  ratio {_num(d.ratio)}" for d in w.dreams[1:]]
    else:
        lines.append("no ratios: the SAE ships no dataset statistics")
    for e in s.errors[:n_worst]:
        lines.append(f"  failed {e.feature}: {e.error}")
    return "\n".join(lines)


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _judge_line(pcts: list[float]) -> str:
    """Median and share above 95 of the judge's percentiles ('n/a' without a judge)."""
    if not pcts:
        return "n/a (no judge)"
    above = sum(p > 95 for p in pcts)
    return f"median {statistics.median(pcts):.0f} (50 = typical prose), {above}/{len(pcts)} above 95"


def ratio_figure(ratios: list[float]):
    """Histogram of dreamed / dataset-max ratios with the 1.0 line."""
    fig, ax = new_figure()
    if ratios:
        ax.hist(ratios, bins=40, color="#ea580c", alpha=0.8)
    ax.axvline(1.0, color="#111827", linestyle="--", lw=1.2)
    ax.set_xlabel("dreamed activation / dataset maximum")
    ax.set_ylabel("features")
    return fig


def write_plot(out_dir: str | Path, s: SweepSummary) -> Path:
    """``out_dir/ratios.png``: the ratio histogram."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = ratio_figure(s.ratios)
    FigureCanvasAgg(fig)
    path = Path(out_dir) / "ratios.png"
    fig.savefig(path, bbox_inches="tight")
    return path


def card_path(out_dir: Path, feature: int) -> Path:
    return out_dir / CARDS_DIR / f"feature_{feature}.html"


def write_cards(out_dir: str | Path, features: list[int], loaded=None) -> list[Path]:
    """Write :func:`featuredream.observe.card_html.feature_card` for ``features`` (their stored dream shown)."""
    from ..observe.card_html import feature_card
    from .run import load_spec

    out_dir = Path(out_dir)
    store = SweepStore.read(out_dir)
    try:
        model, tok, sae = loaded or load_spec(store.spec(), check=False)
        (out_dir / CARDS_DIR).mkdir(exist_ok=True)
        paths = []
        for f in features:
            result = store.result(f)
            if result is None:
                continue
            feature_card(model, tok, sae, f, result, card_path(out_dir, f))
            paths.append(card_path(out_dir, f))
        return paths
    finally:
        store.close()


_CSS = (
    "body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#111827}"
    "table{border-collapse:collapse;width:100%}td,th{padding:3px 8px;border-bottom:1px solid #e5e7eb;"
    "text-align:left;vertical-align:top}td.n{text-align:right;font-variant-numeric:tabular-nums}"
    "code{white-space:pre-wrap;word-break:break-all}.bad{color:#b91c1c}img{max-width:100%}"
)


def _index_row(out_dir: Path, r: SweepRow) -> str:
    """One feature's row of the index page: its card link, ratio, XE, best prompt and its other dreams."""
    e = html.escape
    card = card_path(out_dir, r.feature)
    name = f'<a href="{CARDS_DIR}/{card.name}">{r.feature}</a>' if card.exists() else str(r.feature)
    if not r.ok:
        return f'<tr><td>{name}</td><td colspan="3" class="bad">failed: {e(str(r.error))}</td></tr>'
    ratio = "" if r.ratio is None else f"{r.ratio:.2f}"
    cls = "" if r.feasible else ' class="bad" title="infeasible"'
    more = "".join(
        f"<br><small>dream {i}: <code>{e(d.text)}</code> (ratio {_num(d.ratio)}"
        f"{'' if d.above_floor else ', below the floor'})</small>"
        for i, d in enumerate(r.dreams[1:], 2)
    )
    return (
        f'<tr><td>{name}</td><td class="n">{ratio}</td><td class="n"{cls}>{r.xe:.2f}</td>'
        f"<td><code>{e(str(r.text))}</code>{more}</td></tr>"
    )


def write_index(out_dir: str | Path, s: SweepSummary, plot: bool = True) -> Path:
    """``out_dir/index.html``: the summary, the ratio histogram and one row per feature (see module doc)."""
    out_dir = Path(out_dir)
    e = html.escape
    fp = s.fingerprint
    beat = s.beat_fraction
    head = [
        f"<h1>Sweep: {e(str(fp['sae']))}</h1>",
        f"<p>model {e(str(fp['model']))} \u00b7 objective {e(str(fp['objective']))} \u00b7 reduce "
        f"{e(str(fp['reduce']))} \u00b7 xe_max {e(str(fp['config'].get('xe_max')))}</p>",
        f"<p>{len(s.rows)} features stored, {len(s.ok)} dreamed, {len(s.errors)} failed",
    ]
    if s.ratios:
        head[-1] += (
            f"; dreamed / dataset max: {e(_quantiles(s.ratios))}; beat the dataset maximum: "
            f"{100 * beat:.1f}%</p>"
        )
        if plot:
            head.append(f'<img alt="ratio histogram" src="{png_data_uri(ratio_figure(s.ratios))}">')
    else:
        head[-1] += "</p>"
    rows = [_index_row(out_dir, r) for r in sorted(s.rows, key=lambda r: r.feature)]
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>sweep {e(str(fp["sae"]))}</title>'
        f"<style>{_CSS}</style></head><body>{''.join(head)}<table><tr><th>feature</th><th>ratio</th>"
        f"<th>XE</th><th>dreamed prompt</th></tr>{''.join(rows)}</table></body></html>"
    )
    return write_atomic(out_dir / "index.html", page)
