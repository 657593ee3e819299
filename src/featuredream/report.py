"""Reports: matplotlib figures and a self-contained HTML feature card (plus a Neuronpedia-like JSON export).

The card is one file with no network access: CSS inline, figures as base64 PNG ``data:`` URIs, no
scripts. Every string that came from a tokenizer, a corpus or a result file goes through
:func:`html.escape`, so a token like ``<script>`` shows as text. Building the card is split in two:
:func:`card_data` runs the model (examples, logit effects, steering, histogram values) and
:func:`render_card` is a pure function of that data.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .inspect import Example, encode_prompts
from .models import model_name
from .results import DreamResult, Prompt, write_atomic
from .saes import CHECK_TEXTS, BoundSAE, FeatureStats, site_fvu
from .tracing import RESIDUAL_KINDS, logit_effects, steering

log = logging.getLogger(__name__)

STEER_PROMPT = "My favourite thing to talk about is"
STEER_SCALES = (0.0, 2.0, 4.0, 8.0)
_ACT_RGB, _NEG_RGB = "234,88,12", "37,99,235"
_ACT_HEX = "#ea580c"
_DOT = "\u00b7"


# ---------------------------------------------------------------------------------------------- figures


def _fig(w: float = 6.0, h: float = 3.2):
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
    fig, ax = _fig()
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
    fig, ax = _fig()
    it = [h["iter"] for h in history]
    child = [(h["iter"], h["child_activation"]) for h in history if h.get("child_activation") is not None]
    if child:
        ax.scatter(*zip(*child), s=7, color="#cbd5e1", label="best child of the iteration", zorder=1)
    ax.plot(it, [h["best_activation"] for h in history], color=_ACT_HEX, lw=2, label="best activation")
    ax.set_xlabel("iteration")
    ax.set_ylabel("activation")
    handles, labels = ax.get_legend_handles_labels()
    xe = [h.get("best_xe") for h in history]
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
    fig, ax = _fig()
    pts = sorted((p["xe"], p["activation"]) for p in frontier)
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


# ---------------------------------------------------------------------------------------------- data


@dataclass
class CardData:
    """Everything the card shows; ``figures`` maps a caption to a data URI (None: nothing to plot)."""

    feature: int
    sae_name: str
    site: str
    model: str
    d_sae: int
    dataset_max: float | None
    fire_rate: float | None
    fvu: float | None
    examples: list[tuple[list[str], int, list[float], float]]
    dreams: list[tuple[str, list[str], list[float], float, float]]  # label, tokens, acts, activation, xe
    dream_summary: dict[str, Any] | None
    logits_top: list[tuple[str, float]]
    logits_bottom: list[tuple[str, float]]
    logits_note: str
    steering: list[tuple[float, str]]
    steer_prompt: str
    figures: dict[str, str | None] = field(default_factory=dict)


def _dream_prompts(model, tok, sae: BoundSAE, feature: int, dream: DreamResult, n: int) -> list[tuple]:
    """The best prompt and up to ``n - 1`` buffer prompts with per-token activations (recomputed with the
    dream's objective where the result file does not hold them)."""
    from .evaluate import reference_evaluate
    from .objectives import make_objective

    rows = [("best", dream.best)] + [
        (f"buffer #{i + 1}", p) for i, p in enumerate(dream.buffer) if p.text != dream.best.text
    ]
    rows = rows[:n]
    kind = "decoder" if dream.objective.endswith("/decoder") else "encoder"
    missing = [p.text for _, p in rows if len(p.token_acts) != len(p.tokens) or not p.tokens]
    recomputed = {}
    if missing:
        ref = reference_evaluate(model, tok, make_objective(sae, feature, kind), missing)
        for i, t in enumerate(missing):
            ids = tok(t, add_special_tokens=False)["input_ids"]
            recomputed[t] = ([tok.decode([j]) for j in ids], ref.token_acts[i, : len(ids)].tolist())
    out = []
    for label, p in rows:
        toks, acts = recomputed.get(p.text, (p.tokens, p.token_acts))
        out.append((label, list(toks), [float(a) for a in acts], p.activation, p.xe))
    return out


def card_data(
    model: nn.Module,
    tok,
    sae: BoundSAE,
    feature: int,
    dream: DreamResult | None = None,
    *,
    stats: FeatureStats | None = None,
    n_examples: int = 8,
    n_dreams: int = 4,
    n_logits: int = 12,
    steer_prompt: str = STEER_PROMPT,
    alphas: tuple[float, ...] | None = None,
    max_new_tokens: int = 24,
) -> CardData:
    """Run what the card needs. ``stats``: examples from :func:`featuredream.examples.corpus_stats` (default:
    the SAE's shipped ones). ``alphas`` default: ``STEER_SCALES`` x the dataset max (x 1 without it)."""
    f = sae.check_latent(feature)
    if dream is not None and dream.feature is not None and dream.feature != f:
        raise ValueError(
            f"the dream result is for feature {dream.feature}, not {f}: pass the matching --feature"
        )
    if dream is not None and dream.sae is not None and dream.sae != sae.name:
        log.warning("the dream result names SAE %r but the card uses %r", dream.sae, sae.name)
    stats = stats if stats is not None else sae.stats
    examples = [Example(*e) for e in stats.examples(f)][:n_examples] if stats is not None else []
    # the histogram, the colours and the steering scale use the encoder pre-activation; a decoder-projection
    # dream keeps its own ratio (its dataset max is the max projection) but gets no line on the histogram
    encoder_dream = dream is not None and not dream.objective.endswith("/decoder")
    dmax = float(stats.max_activation[f]) if stats is not None and "max_activation" in stats.tensors else None
    if dmax is None and encoder_dream:
        dmax = dream.dataset_max
    rate = float(stats.fire_rate[f]) if stats is not None and "fire_rate" in stats.tensors else None
    dreams = _dream_prompts(model, tok, sae, f, dream, n_dreams) if dream is not None else []
    if sae.site.kind in RESIDUAL_KINDS + ("attn_z",):
        le = logit_effects(model, tok, sae, f, n_logits)
        top, bottom = [(t.token, t.value) for t in le.top], [(t.token, t.value) for t in le.bottom]
        note = "direct effect: unit decoder direction through the final norm's gain and the unembedding"
    else:
        top, bottom, note = [], [], f"{sae.site.kind} does not write to the residual stream"
    scale = dmax if dmax is not None and dmax > 0 else 1.0
    alphas = tuple(alphas) if alphas is not None else tuple(round(s * scale, 1) for s in STEER_SCALES)
    try:
        steered = [
            (s.alpha, s.text) for s in steering(model, tok, sae, f, steer_prompt, alphas, max_new_tokens)
        ]
    except ValueError as e:  # e.g. a site kind that cannot be steered
        log.warning("no steering: %s", e)
        steered = []
    generic = encode_prompts(model, tok, sae, list(CHECK_TEXTS), "all", values="pre")
    generic_vals = [v for g in generic for v in g[:, f].tolist() if math.isfinite(v)]
    example_vals = [a for e in examples for a in e.acts]
    best = dream.best if dream is not None else None
    figures = {
        "Activation histogram": png_data_uri(
            histogram_figure(generic_vals, example_vals, dmax, best.activation if encoder_dream else None)
        ),
        "Optimization trajectory": png_data_uri(trajectory_figure(dream.history))
        if dream and dream.history
        else None,
        "Activation vs XE frontier": png_data_uri(frontier_figure(dream.frontier, best))
        if dream and dream.frontier
        else None,
    }
    summary = None
    if dream is not None:
        summary = {
            "ratio": dream.ratio,
            "activation": dream.best.activation,
            "xe": dream.best.xe,
            "start": dream.start,
            "objective": dream.objective,
            "iterations": len(dream.history),
            "stop": dream.stop_reason,
            "feasible": dream.feasible,
            "seconds": dream.wall_time,
        }
    try:
        fvu = site_fvu(model, tok, sae)
    except Exception as e:  # noqa: BLE001 - the FVU is informative only
        log.warning("could not measure FVU: %s", e)
        fvu = None
    return CardData(
        feature=f,
        sae_name=sae.name,
        site=str(sae.site),
        model=model_name(model),
        d_sae=sae.d_sae,
        dataset_max=dmax,
        fire_rate=rate,
        fvu=fvu,
        examples=[([tok.decode([i]) for i in e.ids], e.index, e.acts, e.value) for e in examples],
        dreams=dreams,
        dream_summary=summary,
        logits_top=top,
        logits_bottom=bottom,
        logits_note=note,
        steering=steered,
        steer_prompt=steer_prompt,
        figures=figures,
    )


# ---------------------------------------------------------------------------------------------- HTML

_CSS = """
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
"""


def _show(token: str) -> str:
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
        shown = _show(t) if visible else f'<span class="ctl">{_DOT * len(t)}</span>'
        style = f"background:rgba({_ACT_RGB},{alpha:.2f})"
        parts.append(f'<span class="{cls}" style="{style}" title="{title}">{shown}</span>')
    return "".join(parts)


def _multiple(alpha: float, dataset_max: float | None) -> str:
    if not alpha or not dataset_max or dataset_max <= 0:
        return ""
    return f"<small>{alpha / dataset_max:.2g} \u00d7 dataset max</small>"


def _chip(label: str, value: str) -> str:
    return f'<div class="chip"><span>{html.escape(label)}</span><b>{html.escape(value)}</b></div>'


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def _logit_table(rows: list[tuple[str, float]], rgb: str) -> str:
    top = max((abs(v) for _, v in rows), default=1.0) or 1.0
    body = "".join(
        f'<tr><td>{_show(t)}</td><td class="num">{v:+.3g}</td><td style="width:40%"><div class="bar" '
        f'style="width:{100 * abs(v) / top:.0f}%;background:rgb({rgb})"></div></td></tr>'
        for t, v in rows
    )
    return f"<table>{body}</table>"


def _scored(acts: list[float], value: float) -> int | None:
    """Index of the token whose activation is the prompt's score (the last one for ``last``)."""
    if not acts or not math.isfinite(value):
        return None
    return min(reversed(range(len(acts))), key=lambda i: abs(acts[i] - value))


def render_card(d: CardData) -> str:
    """The card as one self-contained HTML document (see module doc)."""
    e = html.escape
    vmax = max(
        [d.dataset_max or 0.0]
        + [a for ex in d.examples for a in ex[2]]
        + [a for dr in d.dreams for a in dr[2]]
    )
    vmax = vmax if vmax > 0 else 1.0
    chips = [_chip("dataset max", _fmt(d.dataset_max)), _chip("fire rate", _fmt(d.fire_rate, ".3%"))]
    s = d.dream_summary
    if s is not None:
        chips += [
            _chip("dream activation", _fmt(s["activation"])),
            _chip(
                "dream / dataset max", _fmt(s["ratio"], ".2f") + ("\u00d7" if s["ratio"] is not None else "")
            ),
            _chip("dream XE", _fmt(s["xe"], ".2f")),
        ]
    chips += [_chip("latents", str(d.d_sae)), _chip("FVU (check texts)", _fmt(d.fvu, ".3f"))]
    out = [
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>feature {d.feature} \u00b7 {e(d.sae_name)}'
        f'</title><meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head><body><main>',
        f'<header><h1>Feature {d.feature}</h1><div class="sub">SAE <b>{e(d.sae_name)}</b> \u00b7 site <code>{e(d.site)}'
        f'</code> \u00b7 model <b>{e(d.model)}</b></div><div class="chips">{"".join(chips)}</div></header>',
    ]
    if d.dreams:
        rows = "".join(
            f'<div class="row"><div class="lbl">{e(lbl)}</div><div class="text">{token_spans(toks, acts, vmax, _scored(acts, act))}'
            f'</div><div class="val">{_fmt(act)}<br><span class="note">XE {_fmt(xe, ".2f")}</span></div></div>'
            for lbl, toks, acts, act, xe in d.dreams
        )
        meta = (
            f"objective <code>{e(s['objective'])}</code> \u00b7 start: {e(str(s['start']))} \u00b7 {s['iterations']} "
            f"iterations ({e(str(s['stop']))}) \u00b7 {_fmt(s['seconds'], '.1f')} s \u00b7 feasible: {e(str(s['feasible']))}"
        )
        out.append(f'<section><h2>Dreamed prompts</h2><p class="note">{meta}</p>{rows}</section>')
    if d.examples:
        rows = "".join(
            f'<div class="row"><div class="text">{token_spans(toks, acts, vmax, idx)}</div><div class="val">{_fmt(v)}</div></div>'
            for toks, idx, acts, v in d.examples
        )
        out.append(
            '<section><h2>Top dataset examples</h2><p class="note">Outlined: the activating token; colour: '
            f"activation per token (hover for the value).</p>{rows}</section>"
        )
    else:
        out.append(
            '<section><h2>Top dataset examples</h2><p class="note">This SAE ships no dataset statistics: '
            "run <code>featuredream inspect examples --corpus FILES</code> or pass examples to the card.</p></section>"
        )
    figs = "".join(
        f'<figure><figcaption>{e(cap)}</figcaption><img alt="{e(cap)}" src="{uri}"></figure>'
        for cap, uri in d.figures.items()
        if uri is not None
    )
    missing = [cap for cap, uri in d.figures.items() if uri is None]
    note = (
        f'<p class="note">Not shown (no dream with that data): {e(", ".join(missing))}.</p>'
        if missing
        else ""
    )
    out.append(f'<section><h2>Figures</h2><div class="grid">{figs}</div>{note}</section>')
    if d.logits_top:
        out.append(
            f'<section><h2>Logit effects</h2><p class="note">{e(d.logits_note)}</p><div class="cols"><div><b>promoted'
            f"</b>{_logit_table(d.logits_top, _ACT_RGB)}</div><div><b>suppressed</b>"
            f"{_logit_table(d.logits_bottom, _NEG_RGB)}</div></div></section>"
        )
    else:
        out.append(f'<section><h2>Logit effects</h2><p class="note">{e(d.logits_note)}</p></section>')
    if d.steering:
        rows = "".join(
            f'<tr><td>\u03b1 = {a:g}{_multiple(a, d.dataset_max)}</td><td class="text">{_show(t)}</td></tr>'
            for a, t in d.steering
        )
        out.append(
            f'<section><h2>Steering</h2><p class="note">Greedy continuations of <code>{e(d.steer_prompt)}</code> with '
            f"\u03b1 \u00d7 the unit decoder direction added at <code>{e(d.site)}</code> at every position (\u03b1 = 0: plain "
            f'generation).</p><table class="steer">{rows}</table></section>'
        )
    out.append(
        "<footer>featuredream feature card \u00b7 self-contained, no network</footer></main></body></html>"
    )
    return "\n".join(out)


def feature_card(
    model: nn.Module,
    tok,
    sae: BoundSAE,
    feature: int,
    dream: DreamResult | None = None,
    out_path: str | Path | None = None,
    **kwargs,
) -> str:
    """Build the HTML feature card (see :func:`card_data` for options); written atomically to ``out_path``."""
    page = render_card(card_data(model, tok, sae, feature, dream, **kwargs))
    if out_path is not None:
        write_atomic(out_path, page)
        log.info("wrote feature card %s", out_path)
    return page


def neuronpedia_json(
    model: nn.Module,
    tok,
    sae: BoundSAE,
    feature: int,
    dream: DreamResult | None = None,
    *,
    stats: FeatureStats | None = None,
    n_logits: int = 10,
) -> dict[str, Any]:
    """The feature in a Neuronpedia-like shape: activations per token, logit effects, and the dreams."""
    f = sae.check_latent(feature)
    stats = stats if stats is not None else sae.stats
    examples = [Example(*x) for x in stats.examples(f)] if stats is not None else []
    acts = [
        {
            "tokens": [tok.decode([i]) for i in ex.ids],
            "values": ex.acts,
            "maxValue": ex.value,
            "maxValueTokenIndex": ex.index,
        }
        for ex in examples
    ]
    if dream is not None:
        acts += [
            {
                "tokens": p.tokens,
                "values": p.token_acts,
                "maxValue": p.activation,
                "maxValueTokenIndex": len(p.tokens) - 1,
                "source": "featuredream dream",
            }
            for p in [dream.best]
        ]
    out = {
        "modelId": model_name(model),
        "layer": f"{sae.site.layer}-{sae.name}",
        "index": f,
        "hookName": sae.site.hook_name,
        "activations": acts,
        "maxActApprox": float(stats.max_activation[f]) if stats is not None else None,
        "frac_nonzero": float(stats.fire_rate[f])
        if stats is not None and "fire_rate" in stats.tensors
        else None,
    }
    if sae.site.kind in RESIDUAL_KINDS + ("attn_z",):
        le = logit_effects(model, tok, sae, f, n_logits)
        out |= {
            "pos_str": [t.token for t in le.top],
            "pos_values": [t.value for t in le.top],
            "neg_str": [t.token for t in le.bottom],
            "neg_values": [t.value for t in le.bottom],
        }
    return out
