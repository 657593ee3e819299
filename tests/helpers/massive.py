"""A tiny model with a massive-norm token: the hole the norm guard closes, in miniature.

SmolLM2's first position (and a lone space at layer 6) has a residual norm 10-200x the median; any direction
then reads a huge, meaningless value there. Here one frequent token's embedding is scaled up, so its
residual norm dwarfs every other position's at every layer, and a direction along it "wins" only there.
"""

from __future__ import annotations

import copy

import torch

from featuredream.models.sites import Site
from featuredream.text.activation_store import store_windows

SITE = Site("resid_post", 1)
SCALE = 200.0


def massive_token_model(tiny_llama, tok):
    """``(model, token, direction)``: a copy of ``tiny_llama`` whose most frequent token in the default
    corpus' store windows (``token``) has its embedding scaled by :data:`SCALE`, and the unit ``direction
    [64]`` of that embedding (its projection at the token is huge and positive)."""
    model = copy.deepcopy(tiny_llama)
    counts = torch.bincount(store_windows(tok).flatten(), minlength=len(tok))
    token = int(counts.argmax())
    emb = model.get_input_embeddings().weight
    with torch.no_grad():
        emb[token] *= SCALE
    model.name_or_path_ = "tiny-llama-massive"
    return model, token, (emb[token] / emb[token].norm()).detach().clone()
