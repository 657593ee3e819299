"""Observation and tracing: activity (what fires where), dataset examples, tracing, figures, the HTML feature
card and the notebook view of a dream result (registered with the engine here)."""

from ..engine.results import register_html_view
from .activity import differential_features, encode_prompts, fire_rate, scan, top_features
from .card import card_data, neuronpedia_json
from .card_html import feature_card, render_card
from .examples import corpus_stats, minimal_context, top_examples
from .result_view import dream_result_html
from .tracing import attribution, default_alphas, logit_effects, steering

register_html_view(dream_result_html)

__all__ = [
    "attribution",
    "card_data",
    "corpus_stats",
    "default_alphas",
    "differential_features",
    "dream_result_html",
    "encode_prompts",
    "feature_card",
    "fire_rate",
    "logit_effects",
    "minimal_context",
    "neuronpedia_json",
    "render_card",
    "scan",
    "steering",
    "top_examples",
    "top_features",
]
