"""Matplotlib figures for reports, returned as figures or inlined as base64 PNG ``data:`` URIs."""

from __future__ import annotations

import base64
import io
import math
from typing import Any

from ..engine.results import Prompt

_ACT_HEX = "#ea580c"


def new_figure(w: float = 6.0, h: float = 3.2):
    """A matplotlib ``(figure, axes)`` of ``w`` x ``h`` inches in the house style (no pyplot state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110)
    ax = fig.add_subplot()
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(alpha=0.25, linewidth=0.6)
    return fig, ax


def _legend(ax, handles: list, labels: list[str]) -> None:
    """A legend under the axes, where it never hides data."""
    ax.legend(
        handles, labels, fontsize=7, frameon=False, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.2)
    )


def png_data_uri(fig) -> str:
    """A matplotlib figure as a ``data:image/png;base64,...`` URI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def histogram_figure(
    generic: list[float], examples: list[float], dataset_max: float | None, dream: float | None
):
    """Per-token activations on generic text and in the top-example windows, with the maxima marked."""
    fig, ax = new_figure()
    vals = [v for v in generic + examples if math.isfinite(v)]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    for m in (dataset_max, dream):
        if m is not None and math.isfinite(m):
            lo, hi = min(lo, m), max(hi, m)
    bins = [lo + (hi - lo + 1e-9) * i / 40 for i in range(41)]
    if generic:
        ax.hist(generic, bins=bins, color="#94a3b8", alpha=0.8, label="generic text (all tokens)")
    if examples:
        ax.hist(examples, bins=bins, color=_ACT_HEX, alpha=0.65, label="top-example windows (all tokens)")
    if dataset_max is not None:
        ax.axvline(
            dataset_max, color="#111827", linestyle="--", lw=1.2, label=f"dataset max {dataset_max:.2f}"
        )
    if dream is not None:
        ax.axvline(dream, color="#7c3aed", lw=2, label=f"dream {dream:.2f}")
    ax.set_yscale("log")
    ax.set_xlabel("activation (encoder pre-activation)")
    ax.set_ylabel("tokens")
    _legend(ax, *ax.get_legend_handles_labels())
    return fig


def trajectory_figure(history: list[dict[str, Any]]):
    """Best activation (and its XE) per iteration, with each iteration's best child."""
    fig, ax = new_figure()
    it = [h.iter for h in history]
    child = [(h.iter, h.child_activation) for h in history if h.child_activation is not None]
    if child:
        ax.scatter(*zip(*child), s=7, color="#cbd5e1", label="best child of the iteration", zorder=1)
    ax.plot(it, [h.best_activation for h in history], color=_ACT_HEX, lw=2, label="best activation")
    ax.set_xlabel("iteration")
    ax.set_ylabel("activation")
    handles, labels = ax.get_legend_handles_labels()
    xe = [h.best_xe for h in history]
    if any(x is not None and math.isfinite(x) for x in xe):
        ax2 = ax.twinx()
        ax2.plot(it, [math.nan if x is None else x for x in xe], color="#2563eb", lw=1.2, label="XE of best")
        ax2.set_ylabel("XE (nats/token)", color="#2563eb")
        ax2.spines[["top"]].set_visible(False)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    _legend(ax, handles, labels)
    return fig


def frontier_figure(frontier: list[dict[str, Any]], best: Prompt | None):
    """The activation-vs-XE Pareto frontier, with the reported best prompt."""
    fig, ax = new_figure()
    pts = sorted((p.xe, p.activation) for p in frontier)
    ax.step([x for x, _ in pts], [a for _, a in pts], where="post", color=_ACT_HEX, lw=1.5)
    ax.scatter([x for x, _ in pts], [a for _, a in pts], s=14, color=_ACT_HEX, label="Pareto frontier")
    if best is not None and math.isfinite(best.xe):
        ax.scatter(
            [best.xe], [best.activation], s=70, marker="*", color="#7c3aed", label="best prompt", zorder=3
        )
    ax.set_xlabel("XE (nats/token, lower = more fluent)")
    ax.set_ylabel("activation")
    _legend(ax, *ax.get_legend_handles_labels())
    return fig
