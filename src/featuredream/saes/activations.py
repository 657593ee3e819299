"""Activations of padded batches at an SAE's site, and the SAE's latent values on them.

Sequences are right- or left-padded (:func:`featuredream.models.padding.pad`); position ids come from the mask, so every real
token sees the position it has alone, and the pass stops after the site's layer
(:func:`site_activations`). Values: ``"code"`` is the SAE's own sparse code (``sae.sae.encode``: after
ReLU / TopK / threshold); ``"pre"`` is the encoder pre-activation. Positions whose activation norm exceeds
the SAE's norm cap (the "massive activations" of the first token) are not valid (:func:`valid_positions`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.sites import Site, forward_with_capture
from .loading import BoundSAE

VALUES = ("code", "pre")


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's (first) parameters."""
    return next(model.parameters()).device


@torch.no_grad()
def site_activations(model: nn.Module, site: Site, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Activation at ``site`` for padded ``ids [b, s]`` with ``mask [b, s]`` -> ``[b, s, width]``.

    Position ids come from the mask (``cumsum - 1``), so left padding gives each real token the position it
    has alone; the pass stops after ``site``'s layer.
    """
    pos = (mask.long().cumsum(1) - 1).clamp_min(0)
    acts, _ = forward_with_capture(
        model, [site], input_ids=ids, attention_mask=mask.long(), position_ids=pos, use_cache=False
    )
    x = acts[site]
    return x.reshape(*x.shape[:2], -1)


def valid_positions(sae: BoundSAE, x: torch.Tensor, mask: torch.Tensor, norm_guard: bool) -> torch.Tensor:
    """``[b, s]`` bool: real tokens (``mask``) whose activation ``x [b, s, d_in]`` is under the SAE's norm
    cap (every real token without ``norm_guard`` or without a cap)."""
    cap = sae.stats.norm_cap if (norm_guard and sae.stats is not None) else None
    return mask if cap is None else mask & (x.float().norm(dim=-1) <= cap)


def latent_values(sae: BoundSAE, x: torch.Tensor, values: str) -> torch.Tensor:
    """``[..., d_in] -> [..., d_sae]`` float32 codes (``values="code"``) or pre-activations (``"pre"``)."""
    if values == "pre":
        return sae.pre_activation(x).float()
    return sae.sae.encode(x.to(sae.sae.W_enc.dtype)).float()
