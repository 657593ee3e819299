"""The data of a feature card: everything :func:`card_data` computes with the model (examples and their
minimal contexts, logit effects, steering, histogram values, the dream's prompts), and the feature in a
Neuronpedia-like JSON shape (:func:`neuronpedia_json`). Rendering it as HTML: :mod:`featuredream.observe.card_html`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from torch import nn

from ..engine.results import DreamResult
from ..models.loading import model_name
from ..models.tl import as_model
from ..saes.check import CHECK_TEXTS, site_fvu
from ..saes.loading import BoundSAE, FeatureStats
from ..text.judge import JudgeScore
from .activity import encode_prompts
from .figures import frontier_figure, histogram_figure, png_data_uri, trajectory_figure
from .top_examples import Example, minimal_context
from .tracing import RESIDUAL_KINDS, Steered, TokenScore, default_alphas, logit_effects, steering

log = logging.getLogger(__name__)

STEER_PROMPT = "My favourite thing to talk about is"


class CardExample(NamedTuple):
    """A dataset example on the card: decoded ``tokens``, ``index`` of the activating token, per-token
    ``acts`` and ``value`` in context (the whole window up to the activating token), and ``min_len``: the
    tokens of its minimal context (:func:`featuredream.observe.top_examples.minimal_context`; None: not computed)."""

    tokens: list[str]
    index: int
    acts: list[float]
    value: float
    min_len: int | None = None


class CardPrompt(NamedTuple):
    """A dreamed prompt on the card: its ``label`` (best, dream #k, most activating, buffer #k), decoded
    ``tokens``, per-token ``acts``, ``activation`` and ``xe``."""

    label: str
    tokens: list[str]
    acts: list[float]
    activation: float
    xe: float


@dataclass(frozen=True)
class DreamSummary:
    """The dream's figures in the card's header and dreams section."""

    ratio: float | None
    activation: float
    xe: float
    start: str
    objective: str
    iterations: int
    stop: str
    feasible: bool
    seconds: float
    judge: JudgeScore | None
    headline: str


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
    dreams: list[CardPrompt]
    dream_summary: DreamSummary | None
    logits_top: list[TokenScore]
    logits_bottom: list[TokenScore]
    logits_note: str
    steering: list[Steered]
    steer_prompt: str
    figures: dict[str, str | None] = field(default_factory=dict)
    context_keep: float | None = None  # the share the minimal contexts keep (None: not computed)
    ladder: list = field(default_factory=list)  # the dream's fluency ladder (engine.results.Rung)


def _dream_prompts(model, tok, sae: BoundSAE, feature: int, dream: DreamResult, n: int) -> list[CardPrompt]:
    """The best prompt, the other distinct dreams, the most activating prompt and buffer prompts (at least
    ``n`` rows, every dream), each once, with per-token activations (recomputed with the dream's objective
    where the result file does not hold them)."""
    from ..evaluation.evaluate import reference_evaluate
    from ..objectives.kinds import make_objective

    best = "best (most readable above the floor)" if dream.headline == "readable" else "best"
    rows = [(best, dream.best)] + [(f"dream #{i + 2}", d.prompt) for i, d in enumerate(dream.dreams[1:])]
    if dream.most_activating is not None:
        rows.append(("most activating", dream.most_activating))
    rows += [(f"buffer #{i + 1}", p) for i, p in enumerate(dream.buffer)]
    seen: set[str] = set()
    rows = [(lbl, p) for lbl, p in rows if not (p.text in seen or seen.add(p.text))]
    rows = rows[: max(n, len(dream.dreams) + 1)]
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
        out.append(CardPrompt(label, list(toks), [float(a) for a in acts], p.activation, p.xe))
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
    """Run what the card needs. ``stats``: examples from :func:`featuredream.observe.top_examples.corpus_stats` (default:
    the SAE's shipped ones). ``alphas`` default: :func:`~.tracing.default_alphas` of the dataset max.
    ``keep``: each example shows its minimal context keeping that share of its value (None: skip that
    computation and show the last ``report.SHOWN_TAIL`` tokens of the context)."""
    model = as_model(model, tok)
    f = sae.check_latent(feature)
    _check_dream(dream, f, sae)
    stats = stats if stats is not None else sae.stats
    examples = [Example(*e) for e in stats.examples(f)][:n_examples] if stats is not None else []
    mins = None if keep is None else [m.length for m in minimal_context(model, tok, sae, f, examples, keep)]
    # the histogram, the colours and the steering scale use the encoder pre-activation; a decoder-projection
    # dream keeps its own ratio (its dataset max is the max projection) but gets no line on the histogram
    encoder_dream = dream is not None and not dream.objective.endswith("/decoder")
    dmax = stats.value("max_activation", f) if stats is not None else None
    if dmax is None and encoder_dream:
        dmax = dream.dataset_max
    top, bottom, note = _logits(model, tok, sae, f, n_logits)
    alphas = tuple(alphas) if alphas is not None else default_alphas(dmax)  # dmax: maybe the dream's
    return CardData(
        feature=f,
        sae_name=sae.name,
        site=str(sae.site),
        model=model_name(model),
        d_sae=sae.d_sae,
        dataset_max=dmax,
        fire_rate=stats.value("fire_rate", f) if stats is not None else None,
        fvu=_fvu(model, tok, sae),
        examples=[
            CardExample([tok.decode([i]) for i in e.ids], e.index, e.acts, e.value, m)
            for e, m in zip(examples, mins if mins is not None else [None] * len(examples))
        ],
        dreams=_dream_prompts(model, tok, sae, f, dream, n_dreams) if dream is not None else [],
        dream_summary=_dream_summary(dream),
        logits_top=top,
        logits_bottom=bottom,
        logits_note=note,
        steering=_steered(model, tok, sae, f, steer_prompt, alphas, max_new_tokens),
        steer_prompt=steer_prompt,
        figures=_figures(model, tok, sae, f, examples, dmax, dream, encoder_dream),
        context_keep=keep,
        ladder=list(dream.ladder) if dream is not None else [],
    )


def _check_dream(dream: DreamResult | None, f: int, sae: BoundSAE) -> None:
    if dream is not None and dream.feature is not None and dream.feature != f:
        raise ValueError(
            f"the dream result is for feature {dream.feature}, not {f}: pass the matching --feature"
        )
    if dream is not None and dream.sae is not None and dream.sae != sae.name:
        log.warning("the dream result names SAE %r but the card uses %r", dream.sae, sae.name)


def _logits(model, tok, sae: BoundSAE, f: int, n: int) -> tuple[list, list, str]:
    """The latent's direct logit effects (top, bottom, note); none for a site off the residual stream."""
    if sae.site.kind not in RESIDUAL_KINDS + ("attn_z",):
        return [], [], f"{sae.site.kind} does not write to the residual stream"
    le = logit_effects(model, tok, sae, f, n)
    note = "direct effect: unit decoder direction through the final norm's gain and the unembedding"
    return list(le.top), list(le.bottom), note


def _steered(model, tok, sae: BoundSAE, f: int, prompt: str, alphas, max_new_tokens: int) -> list:
    try:
        return list(steering(model, tok, sae, f, prompt, alphas, max_new_tokens))
    except ValueError as e:  # e.g. a site kind that cannot be steered
        log.warning("no steering: %s", e)
        return []


def _figures(model, tok, sae: BoundSAE, f: int, examples, dmax, dream, encoder_dream: bool) -> dict:
    """The card's figures as data URIs (None: nothing to plot)."""
    generic = encode_prompts(model, tok, sae, list(CHECK_TEXTS), "all", values="pre")
    generic_vals = [v for g in generic for v in g[:, f].tolist() if math.isfinite(v)]
    example_vals = [a for e in examples for a in e.acts]
    best = dream.best if dream is not None else None
    hist = histogram_figure(generic_vals, example_vals, dmax, best.activation if encoder_dream else None)
    return {
        "Activation histogram": png_data_uri(hist),
        "Optimization trajectory": png_data_uri(trajectory_figure(dream.history))
        if dream and dream.history
        else None,
        "Activation vs XE frontier": png_data_uri(frontier_figure(dream.frontier, best))
        if dream and dream.frontier
        else None,
    }


def _dream_summary(dream: DreamResult | None) -> DreamSummary | None:
    if dream is None:
        return None
    b = dream.best
    return DreamSummary(
        dream.ratio,
        b.activation,
        b.xe,
        dream.start,
        dream.objective,
        len(dream.history),
        dream.stop_reason,
        dream.feasible,
        dream.wall_time,
        dream.judge,
        dream.headline,
    )


def _fvu(model, tok, sae: BoundSAE) -> float | None:
    try:
        return site_fvu(model, tok, sae)
    except Exception as e:  # noqa: BLE001 - the FVU is informative only
        log.warning("could not measure FVU: %s", e)
        return None


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
    model = as_model(model, tok)
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
        "maxActApprox": stats.value("max_activation", f) if stats is not None else None,
        "frac_nonzero": stats.value("fire_rate", f) if stats is not None else None,
    }
    top, bottom, _ = _logits(model, tok, sae, f, n_logits)  # the card's logit section, in its shape
    if top or bottom:
        out |= {
            "pos_str": [t.token for t in top],
            "pos_values": [t.value for t in top],
            "neg_str": [t.token for t in bottom],
            "neg_values": [t.value for t in bottom],
        }
    return out
