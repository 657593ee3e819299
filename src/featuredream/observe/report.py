"""Reports: matplotlib figures and a self-contained HTML feature card (plus a Neuronpedia-like JSON export).

The card is one file with no network access: CSS inline, figures as base64 PNG ``data:`` URIs, no
scripts. Every string that came from a tokenizer, a corpus or a result file goes through
:func:`html.escape`, so a token like ``<script>`` shows as text. Building the card is split in two:
:func:`card_data` runs the model (examples and their minimal contexts, logit effects, steering, histogram
values) and :func:`render_card` is a pure function of that data. Each top example shows its minimal
context (:func:`featuredream.inspect.minimal_context`); the rest of its window sits in a ``<details>``.
"""

from __future__ import annotations

import html
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from torch import nn

from .figures import frontier_figure, histogram_figure, png_data_uri, trajectory_figure
from .html import (
    _ACT_RGB,
    _CSS,
    _NEG_RGB,
    _chip,
    _fmt,
    _logit_table,
    _multiple,
    _scored,
    _show,
    context_spans,
    token_spans,
)
from .inspect import Example, encode_prompts, minimal_context
from ..lm.models import model_name
from ..engine.results import DreamResult, write_atomic
from ..lm.saes import CHECK_TEXTS, BoundSAE, FeatureStats, site_fvu
from .tracing import RESIDUAL_KINDS, logit_effects, steering

log = logging.getLogger(__name__)

STEER_PROMPT = "My favourite thing to talk about is"
STEER_SCALES = (0.0, 2.0, 4.0, 8.0)
SHOWN_TAIL = 12  # context tokens shown when the minimal context is not known


class CardExample(NamedTuple):
    """A dataset example on the card: decoded ``tokens``, ``index`` of the activating token, per-token
    ``acts`` and ``value`` in context (the whole window up to the activating token), and ``min_len``: the
    tokens of its minimal context (:func:`featuredream.inspect.minimal_context`; None: not computed)."""

    tokens: list[str]
    index: int
    acts: list[float]
    value: float
    min_len: int | None = None


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
    examples: list[CardExample]  # plain (tokens, index, acts, value) tuples are read as well
    dreams: list[tuple[str, list[str], list[float], float, float]]  # label, tokens, acts, activation, xe
    dream_summary: dict[str, Any] | None
    logits_top: list[tuple[str, float]]
    logits_bottom: list[tuple[str, float]]
    logits_note: str
    steering: list[tuple[float, str]]
    steer_prompt: str
    figures: dict[str, str | None] = field(default_factory=dict)
    context_keep: float | None = None  # the share the minimal contexts keep (None: not computed)


def _dream_prompts(model, tok, sae: BoundSAE, feature: int, dream: DreamResult, n: int) -> list[tuple]:
    """The best prompt and up to ``n - 1`` buffer prompts with per-token activations (recomputed with the
    dream's objective where the result file does not hold them)."""
    from ..engine.evaluate import reference_evaluate
    from ..engine.objectives import make_objective

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
    keep: float | None = 0.9,
) -> CardData:
    """Run what the card needs. ``stats``: examples from :func:`featuredream.examples.corpus_stats` (default:
    the SAE's shipped ones). ``alphas`` default: ``STEER_SCALES`` x the dataset max (x 1 without it).
    ``keep``: each example shows its minimal context keeping that share of its value (None: skip that
    computation and show the last ``SHOWN_TAIL`` tokens of the context)."""
    f = sae.check_latent(feature)
    if dream is not None and dream.feature is not None and dream.feature != f:
        raise ValueError(
            f"the dream result is for feature {dream.feature}, not {f}: pass the matching --feature"
        )
    if dream is not None and dream.sae is not None and dream.sae != sae.name:
        log.warning("the dream result names SAE %r but the card uses %r", dream.sae, sae.name)
    stats = stats if stats is not None else sae.stats
    examples = [Example(*e) for e in stats.examples(f)][:n_examples] if stats is not None else []
    mins = None if keep is None else [m.length for m in minimal_context(model, tok, sae, f, examples, keep)]
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
        examples=[
            CardExample([tok.decode([i]) for i in e.ids], e.index, e.acts, e.value, m)
            for e, m in zip(examples, mins if mins is not None else [None] * len(examples))
        ],
        dreams=dreams,
        dream_summary=summary,
        logits_top=top,
        logits_bottom=bottom,
        logits_note=note,
        steering=steered,
        steer_prompt=steer_prompt,
        figures=figures,
        context_keep=keep,
    )


# ---------------------------------------------------------------------------------------------- HTML


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
        out.append(_examples_section(d, vmax))
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


def _example_row(ex: CardExample, vmax: float) -> str:
    """One example: its context collapsed to the minimal one (or the last ``SHOWN_TAIL`` tokens)."""
    full = ex.index + 1
    shown = ex.min_len if ex.min_len is not None else min(full, SHOWN_TAIL)
    what = "minimal context" if ex.min_len is not None else "shown"
    label = f"{full - shown} earlier tokens of the context: open to see the whole window"
    spans = context_spans(ex.tokens, ex.acts, vmax, ex.index, full - shown, label)
    return (
        f'<div class="row"><div class="text">{spans}</div><div class="val">{_fmt(ex.value)}<br><span '
        f'class="note" title="tokens: {what} / whole context">{shown} / {full} tok</span></div></div>'
    )


def _examples_section(d: CardData, vmax: float) -> str:
    rows = "".join(_example_row(CardExample(*ex), vmax) for ex in d.examples)
    if d.context_keep is not None:
        shown = (
            f"the minimal context: the shortest end of the window that alone keeps \u2265 {d.context_keep * 100:g}% "
            "of the value (n / m tok: its tokens / the whole context's)"
        )
    else:
        shown = f"the last {SHOWN_TAIL} tokens of the context (n / m tok: shown / the whole context)"
    return (
        '<section><h2>Top dataset examples</h2><p class="note">Values are activations in context: the encoder '
        "pre-activation at the outlined token, computed with the whole corpus window up to it. Shown is "
        f"{shown}; click an example to open the whole window (dashed: where the shown part starts). Colour: "
        f"activation per token in context (hover for the value).</p>{rows}</section>"
    )


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
        "maxActApprox": float(stats.max_activation[f])
        if stats is not None and "max_activation" in stats.tensors
        else None,
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
