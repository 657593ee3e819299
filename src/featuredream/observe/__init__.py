"""Looking at features: ``activity`` (what fires where: top and differential features, scans, fire rates),
``top_examples`` (a latent's top dataset examples and their minimal contexts), ``tracing`` (logit effects,
attribution, steering), ``figures``, the HTML feature card (``card`` data, ``card_html`` rendering,
``card_parts`` and ``html_parts``: escaped pieces) and the notebook view of a dream result
(``result_view``, registered with the engine here).

May import every room below it (models, text, saes, objectives, engine); nothing above it.
"""

from ..engine.results import register_html_view
from .activity import differential_features, encode_prompts, fire_rate, scan, top_features
from .card import card_data, neuronpedia_json
from .card_html import feature_card, render_card
from .result_view import dream_result_html
from .top_examples import corpus_stats, minimal_context, top_examples
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
