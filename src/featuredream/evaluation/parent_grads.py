"""What the mutation operators need from a parent, for K parents in one forward + backward pass.

For each parent: the gradient of its *whole* loss (``-activation + w * XE``) with respect to the one-hot
ids (for GCG, with the XE term: without it GCG proposes swaps the fluency ranking then rejects) and the next-token log-probabilities (for sampled swap /
insert). A single dream is K = 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from ..models.loading import embed_scale
from ..models.padding import length_mask, pad
from ..models.sites import run_sites
from ..models.xe import sequence_xe
from ..objectives.group import ObjectiveGroup, Single
from ..objectives.kinds import Objective


class ParentSignals(NamedTuple):
    """``grad [L, V]`` of the loss w.r.t. one-hot ids, ``logprobs [L, V]`` (row t predicts token t+1), and
    the parent's ``score`` and ``xe``."""

    grad: torch.Tensor
    logprobs: torch.Tensor
    score: float
    xe: float


def batched_parent_signals(
    model: nn.Module,
    objective: ObjectiveGroup,
    parents: Sequence[torch.Tensor],
    owner: Sequence[int],
    xe_weights: Sequence[float],
) -> list[ParentSignals]:
    """:class:`ParentSignals` of ``K`` parents in one forward + backward pass.

    ``parents``: K id tensors ``[L_k]``; ``owner[k]``: the group member parent ``k`` is scored on;
    ``xe_weights[k]``: its loss's XE weight. The parents are right-padded without an attention mask: a real
    token never attends to the padding after it, so each row's values are its own. The one-hot gradient is
    ``(d loss / d embeds) * scale @ W_E^T``, what autograd computes for ``(one_hot @ W_E) * scale`` without
    building the ``[K, L, V]`` one-hot input. The embedding scale (Gemma) is applied by hand.
    """
    W = model.get_input_embeddings().weight  # [V, d_model]
    scale = embed_scale(model)
    ids, mask = pad(list(parents), 0, device=W.device)
    lengths = mask.sum(1)
    mask = length_mask(lengths, ids.shape[1])
    weights = torch.tensor(list(xe_weights), dtype=torch.float32, device=W.device)
    with torch.enable_grad():
        embeds = (W[ids] * scale).detach().requires_grad_(True)  # [K, s, d_model]
        acts, logits = run_sites(model, objective.sites, inputs_embeds=embeds, logits=True)
        out = objective(acts, mask, torch.tensor(list(owner), device=W.device))
        xe = sequence_xe(logits, ids, mask)
        loss = -out.scores + weights * xe  # [K]
        ok = torch.isfinite(loss)
        if ok.any():
            loss[ok].sum().backward()
            g_emb = embeds.grad.masked_fill(~ok[:, None, None], 0.0)
        else:
            g_emb = torch.zeros_like(embeds)
    g_emb = g_emb * scale
    result = []
    for k, n in enumerate(lengths.tolist()):
        grad = g_emb[k, :n] @ W.T  # [L_k, V]
        logprobs = torch.log_softmax(logits[k, :n].detach().float(), dim=-1)
        result.append(
            ParentSignals(grad.detach(), logprobs, float(out.scores[k].detach()), float(xe[k].detach()))
        )
    return result


def parent_signals(
    model: nn.Module, objective: Objective, ids: torch.Tensor, xe_weight: float
) -> ParentSignals:
    """:class:`ParentSignals` of one parent ``ids [L]`` under ``objective`` (K = 1)."""
    return batched_parent_signals(model, Single(objective), [ids], [0], [xe_weight])[0]
