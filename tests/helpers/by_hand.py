"""Independent evaluations for tests: plain transformers forward passes (``output_hidden_states``) and SAE
weights applied by hand. No featuredream code is in the path, so a test that compares a reported number
with these compares it with something the package did not compute."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def forward(model, ids: list[int]):
    """One unpadded sequence: ``(hidden_states, logits [L, V])``; ``hidden_states[l]`` is ``[L, d]``, the
    input of decoder layer ``l`` (resid_pre l = resid_post l-1), ``hidden_states[0]`` the scaled embeddings."""
    out = model(input_ids=torch.tensor([ids]), output_hidden_states=True, use_cache=False)
    return [h[0].float() for h in out.hidden_states], out.logits[0].float()


def resid(model, ids: list[int], kind: str, layer: int) -> torch.Tensor:
    """``[L, d]`` residual stream at ``resid_pre`` / ``resid_post`` of ``layer``."""
    hs, _ = forward(model, ids)
    return hs[layer] if kind == "resid_pre" else hs[layer + 1]


def mean_xe(model, ids: list[int]) -> float:
    """Mean next-token cross-entropy of the text's tokens 1..L-1 given their prefix."""
    _, logits = forward(model, ids)
    return float(F.cross_entropy(logits[:-1], torch.tensor(ids[1:])))


def encoder_pre(sae, x: torch.Tensor, latent: int) -> torch.Tensor:
    """An sae-lens SAE's encoder pre-activation of ``latent`` (``apply_b_dec_to_input``, no normalization):
    ``(x - b_dec) @ W_enc[:, latent] + b_enc[latent]``, from the raw weights of ``sae`` (a BoundSAE)."""
    s = sae.sae
    return (x - s.b_dec.float()) @ s.W_enc[:, latent].float() + s.b_enc[latent].float()


def decoder_projection(sae, x: torch.Tensor, latent: int) -> torch.Tensor:
    w = sae.sae.W_dec[latent].float()
    return x @ (w / w.norm())
