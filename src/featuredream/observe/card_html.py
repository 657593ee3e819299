"""The HTML feature card: a pure function of its data (:mod:`featuredream.observe.card`), self-contained.

The card is one file with no network access: CSS inline, figures as base64 PNG ``data:`` URIs, no
scripts. Every string that came from a tokenizer, a corpus or a result file goes through
:func:`html.escape`, so a token like ``<script>`` shows as text. Building the card is split in two:
:func:`featuredream.observe.card.card_data` runs the model (examples and their minimal contexts, logit
effects, steering, histogram values) and :func:`render_card` is a pure function of that data. Each top
example shows its minimal context (:func:`featuredream.observe.top_examples.minimal_context`); the rest of its
window sits in a ``<details>``.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path

from torch import nn

from ..engine.results import DreamResult, write_atomic
from ..saes.loading import BoundSAE
from .card import CardData, CardExample, card_data
from .card_parts import CSS, alpha_multiple, context_spans, logit_table
from .html_parts import (
    ACT_RGB,
    NEG_RGB,
    HTMLPage,
    chip,
    fmt_value,
    ladder_table,
    scored_index,
    show_token,
    token_spans,
)

log = logging.getLogger(__name__)

SHOWN_TAIL = 12  # context tokens shown when the minimal context is not known


# ---------------------------------------------------------------------------------------------- HTML


def render_card(d: CardData) -> HTMLPage:
    """The card as one self-contained HTML document (see module doc): a ``str`` that a notebook shows
    inline (:class:`~.html_parts.HTMLPage`)."""
    e = html.escape
    # colours run up to the scored values (dataset max, examples' values, dreams' scores), not to the largest
    # token: a first-token attention sink (hundreds, against scores of ~30) would wash every other token out
    vmax = max(
        [d.dataset_max or 0.0]
        + [CardExample(*ex).value for ex in d.examples]
        + [dr.activation for dr in d.dreams]
    )
    vmax = vmax if vmax > 0 else 1.0
    out = [
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>feature {d.feature} \u00b7 {e(d.sae_name)}'
        f'</title><meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head><body><main>',
        _header(d),
        _dreams_section(d, vmax),
        _ladder_section(d, vmax),
        _examples_section(d, vmax) if d.examples else _no_examples(),
        _figures_section(d),
        _logits_section(d),
        _steering_section(d),
        "<footer>featuredream feature card \u00b7 self-contained, no network</footer></main></body></html>",
    ]
    return HTMLPage("\n".join(part for part in out if part))


def _header(d: CardData) -> str:
    e = html.escape
    chips = [chip("dataset max", fmt_value(d.dataset_max)), chip("fire rate", fmt_value(d.fire_rate, ".3%"))]
    s = d.dream_summary
    if s is not None:
        chips += [
            chip("dream activation", fmt_value(s.activation)),
            chip(
                "dream / dataset max", fmt_value(s.ratio, ".2f") + ("\u00d7" if s.ratio is not None else "")
            ),
            chip("dream XE", fmt_value(s.xe, ".2f")),
        ]
        if s.judge:
            chips.append(chip("judge percentile", fmt_value(s.judge.percentile, ".0f")))
    chips += [chip("latents", str(d.d_sae)), chip("FVU (check texts)", fmt_value(d.fvu, ".3f"))]
    return (
        f'<header><h1>Feature {d.feature}</h1><div class="sub">SAE <b>{e(d.sae_name)}</b> \u00b7 site <code>{e(d.site)}'
        f'</code> \u00b7 model <b>{e(d.model)}</b></div><div class="chips">{"".join(chips)}</div></header>'
    )


def _dreams_section(d: CardData, vmax: float) -> str:
    if not d.dreams:
        return ""
    e, s = html.escape, d.dream_summary
    rows = "".join(
        f'<div class="row"><div class="lbl">{e(p.label)}</div><div class="text">'
        f"{token_spans(p.tokens, p.acts, vmax, scored_index(p.acts, p.activation))}</div>"
        f'<div class="val">{fmt_value(p.activation)}<br><span class="note">XE {fmt_value(p.xe, ".2f")}</span></div></div>'
        for p in d.dreams
    )
    meta = (
        f"objective <code>{e(s.objective)}</code> \u00b7 start: {e(str(s.start))} \u00b7 {s.iterations} "
        f"iterations ({e(str(s.stop))}) \u00b7 {fmt_value(s.seconds, '.1f')} s \u00b7 feasible: {e(str(s.feasible))}"
        f" \u00b7 headline: {e(s.headline)}"
    )
    return f'<section><h2>Dreamed prompts</h2><p class="note">{meta}</p>{rows}</section>'


def _ladder_section(d: CardData, vmax: float) -> str:
    if not d.ladder:
        return ""

    def ratio_of(p):
        return p.activation / d.dataset_max if d.dataset_max else None

    return (
        '<section><h2>Fluency ladder</h2><p class="note">The most activating prompt found at each XE '
        "ceiling (pNN: that percentile of natural prose at the prompt's length); judge pct: the fluency "
        "judge's percentile among natural prose (50 = typical, lower reads more natural).</p>"
        f"{ladder_table(d.ladder, ratio_of, vmax)}</section>"
    )


def _no_examples() -> str:
    return (
        '<section><h2>Top dataset examples</h2><p class="note">This SAE ships no dataset statistics: '
        "run <code>featuredream inspect examples --corpus FILES</code> or pass examples to the card.</p></section>"
    )


def _figures_section(d: CardData) -> str:
    e = html.escape
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
    return f'<section><h2>Figures</h2><div class="grid">{figs}</div>{note}</section>'


def _logits_section(d: CardData) -> str:
    e = html.escape
    if not d.logits_top:
        return f'<section><h2>Logit effects</h2><p class="note">{e(d.logits_note)}</p></section>'
    return (
        f'<section><h2>Logit effects</h2><p class="note">{e(d.logits_note)}</p><div class="cols"><div><b>promoted'
        f"</b>{logit_table(d.logits_top, ACT_RGB)}</div><div><b>suppressed</b>"
        f"{logit_table(d.logits_bottom, NEG_RGB)}</div></div></section>"
    )


def _steering_section(d: CardData) -> str:
    if not d.steering:
        return ""
    e = html.escape
    rows = "".join(
        f'<tr><td>\u03b1 = {s.alpha:g}{alpha_multiple(s.alpha, d.dataset_max)}</td><td class="text">'
        f"{show_token(s.text)}</td></tr>"
        for s in d.steering
    )
    return (
        f'<section><h2>Steering</h2><p class="note">Greedy continuations of <code>{e(d.steer_prompt)}</code> with '
        f"\u03b1 \u00d7 the unit decoder direction added at <code>{e(d.site)}</code> at every position (\u03b1 = 0: plain "
        f'generation).</p><table class="steer">{rows}</table></section>'
    )


def _example_row(ex: CardExample, vmax: float) -> str:
    """One example: its context collapsed to the minimal one (or the last ``SHOWN_TAIL`` tokens)."""
    full = ex.index + 1
    shown = ex.min_len if ex.min_len is not None else min(full, SHOWN_TAIL)
    what = "minimal context" if ex.min_len is not None else "shown"
    label = f"{full - shown} earlier tokens of the context: open to see the whole window"
    spans = context_spans(ex.tokens, ex.acts, vmax, ex.index, full - shown, label)
    return (
        f'<div class="row"><div class="text">{spans}</div><div class="val">{fmt_value(ex.value)}<br><span '
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
) -> HTMLPage:
    """Build the HTML feature card (see :func:`card_data` for options); written atomically to ``out_path``.
    The page is a ``str`` that shows inline as the last expression of a notebook cell."""
    page = render_card(card_data(model, tok, sae, feature, dream, **kwargs))
    if out_path is not None:
        write_atomic(out_path, page)
        log.info("wrote feature card %s", out_path)
    return page
