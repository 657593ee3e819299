"""K latents of one SAE at once: one objective, one batched gradient pass, one batched evaluator.

:class:`MultiLatentObjective` scores a batch on K latents with **one** SAE matmul (``[b, s, d_in] @
[d_in, K]``). Given ``owner [b]`` (which of the K latents each row belongs to) it returns each row's own
score, so children of K different features can share one forward pass. :func:`batched_parent_signals`
is :func:`featuredream.mutations.parent_signals` for K parents in one forward + backward pass, and
:class:`OwnedEvaluator` is the evaluator's fast path over such mixed batches (rows sorted by length so
each chunk pads little). Rows never interact (causal model, right padding, no cross-row reduction), so a
row's values equal what the single-latent path computes for it, up to float rounding of differently
shaped matmuls.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from .evaluate import EvalOutput, halve_on_oom, length_mask, pad_right
from .fluency import sequence_xe
from ..lm.models import embed_scale
from .multi_prefix import run_parents, run_tails, shared_prefixes
from .mutations import ParentSignals
from .objectives import ObjectiveOutput, make_objective, reduce_positions
from .prefix_cache import BUCKET_OVERHEAD, plan_buckets, supports_prefix
from ..lm.saes import BoundSAE
from ..lm.sites import run_sites

log = logging.getLogger(__name__)


class MultiLatentObjective:
    """``K`` latents of ``sae`` with one kind (``encoder`` / ``decoder``), reduction and norm guard.

    ``singles[k]`` is the ordinary single-latent objective of ``latents[k]``: the reference path re-scores
    each feature's result with it, exactly as :func:`featuredream.dream` does.
    """

    def __init__(
        self,
        sae: BoundSAE,
        latents: Sequence[int],
        kind: str = "encoder",
        reduce: str = "last",
        norm_guard: bool | float = True,
    ):
        if len(latents) == 0:
            raise ValueError("no latents given: valid is at least one latent index")
        self.singles = [make_objective(sae, lat, kind, reduce, norm_guard) for lat in latents]
        self.latents = tuple(o.latent for o in self.singles)
        if len(set(self.latents)) != len(self.latents):
            dup = sorted({x for x in self.latents if self.latents.count(x) > 1})
            raise ValueError(f"latents {dup} given more than once: valid is each latent once")
        self.sae, self.kind = sae, kind
        self.site, self.reduce = sae.site, self.singles[0].reduce
        self.sites = (sae.site,)
        self.norm_cap = self.singles[0].norm_cap
        self.name = f"{sae.name}/{len(self.latents)} latents/{kind}"
        if kind == "decoder":
            self.directions = torch.stack([o.direction for o in self.singles], dim=1)  # [d_in, K]

    def __len__(self) -> int:
        return len(self.latents)

    def token_values(self, x: torch.Tensor) -> torch.Tensor:
        """``[b, s, d_in] -> [b, s, K]``: every latent at every position, one matmul."""
        if self.kind == "encoder":
            return self.sae.pre_activation(x, list(self.latents))
        return x.to(self.directions.dtype) @ self.directions

    def __call__(self, acts: dict, mask: torch.Tensor, owner: torch.Tensor | None = None) -> ObjectiveOutput:
        """Scores of ``acts`` (``{site: [b, s, d_in]}``) under ``mask [b, s]``.

        Without ``owner``: ``scores [b, K]``, ``token_acts [b, s, K]``. With ``owner [b]`` (indices into
        ``latents``): each row's own latent, ``scores [b]``, ``token_acts [b, s]``. ``valid [b, s]`` either way.
        """
        x = acts[self.site]
        mask = mask.bool()
        vals = self.token_values(x).float()  # [b, s, K]
        valid = mask
        if self.norm_cap is not None:
            valid = valid & (x.float().norm(dim=-1) <= self.norm_cap)
        b, s, k = vals.shape
        if owner is not None:
            own = vals.gather(2, owner.to(vals.device)[:, None, None].expand(b, s, 1))[..., 0]
            own = own.masked_fill(~mask, 0.0)
            return ObjectiveOutput(reduce_positions(own, valid, mask, self.reduce), own, valid)
        vals = vals.masked_fill(~mask[..., None], 0.0)
        flat = vals.permute(0, 2, 1).reshape(b * k, s)
        scores = reduce_positions(
            flat, valid.repeat_interleave(k, 0), mask.repeat_interleave(k, 0), self.reduce
        )
        return ObjectiveOutput(scores.view(b, k), vals, valid)


def batched_parent_signals(
    model: nn.Module,
    objective: MultiLatentObjective,
    parents: Sequence[torch.Tensor],
    owner: Sequence[int],
    xe_weights: Sequence[float],
) -> list[ParentSignals]:
    """:func:`~featuredream.mutations.parent_signals` of ``K`` parents in one forward + backward pass.

    ``parents``: K id tensors ``[L_k]``; ``owner[k]``: the latent index (into ``objective.latents``) parent
    ``k`` is scored on; ``xe_weights[k]``: its loss's XE weight. Returns per parent ``grad [L_k, V]`` (of
    ``-activation + w * XE`` w.r.t. the one-hot ids) and ``logprobs [L_k, V]``. The parents are right-padded
    without an attention mask: a real token never attends to the padding after it, so each row's values
    are its own. The one-hot gradient is ``(d loss / d embeds) * scale @ W_E^T``, what autograd computes for
    ``(one_hot @ W_E) * scale`` without building the ``[K, L, V]`` one-hot input.
    """
    emb = model.get_input_embeddings()
    W = emb.weight  # [V, d_model]
    scale = embed_scale(model)
    ids, lengths = pad_right(list(parents), 0, W.device)
    mask = length_mask(lengths, ids.shape[1])
    weights = torch.tensor(list(xe_weights), dtype=torch.float32, device=W.device)
    with torch.enable_grad():
        embeds = (W[ids] * scale).detach().requires_grad_(True)  # [K, s, d_model]
        acts, logits = run_sites(model, objective.sites, inputs_embeds=embeds, logits=True)
        out = objective(acts, mask, owner=torch.tensor(list(owner), device=W.device))
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


class OwnedEvaluator:
    """The evaluator's fast path over rows that belong to different latents of a multi-latent objective.

    Args:
        model: the causal LM (frozen).
        objective: the :class:`MultiLatentObjective`.
        need_xe: compute XE (full forward); otherwise stop after the objective's site.
        batch_size: rows per forward pass; halves on out-of-memory.
        prefix_cache: when called with ``parents``, run the parents once with a key/value cache and each
            child only from its first token that differs from its own parent (:mod:`.multi_prefix`).
    """

    def __init__(
        self,
        model: nn.Module,
        objective: MultiLatentObjective,
        *,
        need_xe: bool,
        batch_size: int = 256,
        prefix_cache: bool = False,
    ):
        self.model, self.objective, self.need_xe, self.batch_size = model, objective, need_xe, batch_size
        self.prefix_cache = prefix_cache and supports_prefix(objective)
        self.bucket_overhead = BUCKET_OVERHEAD["cuda" if next(model.parameters()).is_cuda else "cpu"]
        self.n_evaluated = 0
        self.n_cached_tokens = 0

    def _finish(self, acts, ids, lengths, owner, xe) -> EvalOutput:
        out = self.objective(acts, length_mask(lengths, ids.shape[1]), owner=owner)
        xe = torch.full_like(out.scores, torch.nan) if xe is None else xe
        return EvalOutput(out.scores.float(), xe.float(), out.token_acts, out.valid)

    @torch.no_grad()
    def _run(self, ids: torch.Tensor, lengths: torch.Tensor, owner: torch.Tensor) -> EvalOutput:
        acts, logits = run_sites(self.model, self.objective.sites, input_ids=ids, logits=self.need_xe)
        xe = sequence_xe(logits, ids, length_mask(lengths, ids.shape[1])) if self.need_xe else None
        return self._finish(acts, ids, lengths, owner, xe)

    def _chunked(self, idx: torch.Tensor, fn) -> list[tuple[torch.Tensor, EvalOutput]]:
        """``fn(rows)`` over ``idx`` in chunks of ``batch_size``; on out-of-memory halve and retry."""
        parts, i = [], 0
        while i < len(idx):
            n = self.batch_size
            try:
                parts.append((idx[i : i + n], fn(idx[i : i + n])))
            except (torch.OutOfMemoryError, RuntimeError) as e:
                halve_on_oom(self, e)
                continue
            i += n
        return parts

    def __call__(
        self,
        ids: torch.Tensor,
        lengths: torch.Tensor,
        owner: torch.Tensor,
        parents: dict[int, torch.Tensor] | None = None,
    ) -> EvalOutput:
        """``ids [b, s]`` right-padded, ``lengths [b]``, ``owner [b]`` -> each row's own scores ``[b]``.

        ``parents[k]`` (``[L]``): the ids feature ``k``'s rows were mutated from; only a speed-up, used with
        ``prefix_cache``.
        """
        seq = ids.shape[1]

        def plain(rows: torch.Tensor) -> EvalOutput:
            return self._run(ids[rows, : int(lengths[rows].max())], lengths[rows], owner[rows])

        if parents is not None and self.prefix_cache and len(ids) > 1:
            parts = self._cached(ids, lengths, owner, parents, plain)
        else:  # similar lengths share a chunk: little padding
            parts = self._chunked(torch.argsort(lengths, stable=True), plain)
        self.n_evaluated += len(ids)
        pad = nn.functional.pad
        out = EvalOutput(
            torch.cat([p.scores for _, p in parts]),
            torch.cat([p.xe for _, p in parts]),
            torch.cat([pad(p.token_acts, (0, seq - p.token_acts.shape[1])) for _, p in parts]),
            torch.cat([pad(p.valid, (0, seq - p.valid.shape[1])) for _, p in parts]),
        )
        inv = torch.argsort(torch.cat([rows for rows, _ in parts]))
        return EvalOutput(*(t[inv] for t in out))

    @torch.no_grad()
    def _cached(self, ids, lengths, owner, parents, plain) -> list[tuple[torch.Tensor, EvalOutput]]:
        used = sorted(set(owner.tolist()))
        local = torch.full((max(used) + 1,), -1, dtype=torch.long)
        local[used] = torch.arange(len(used))
        rows = local[owner.cpu()].to(ids.device)  # each child's parent row
        par_ids, par_len = pad_right([parents[k].to(ids.device) for k in used], 0, ids.device)
        prefix = shared_prefixes(par_ids, par_len, rows, ids, lengths)
        buckets = plan_buckets(prefix, lengths, self.bucket_overhead, parent_len=int(par_len.sum()))
        if buckets[-1][0] == 0:
            return self._chunked(torch.argsort(lengths, stable=True), plain)
        sites = self.objective.sites
        par = run_parents(self.model, sites, [parents[k] for k in used], logits=self.need_xe)
        parts = []
        for p, idx in buckets:

            def tail(sel: torch.Tensor, p=p) -> EvalOutput:
                c_ids, c_len = ids[sel, : int(lengths[sel].max())], lengths[sel]
                if p == 0:
                    return self._run(c_ids, c_len, owner[sel])
                acts, xe = run_tails(self.model, sites, par, rows[sel], p, c_ids, c_len, logits=self.need_xe)
                return self._finish(acts, c_ids, c_len, owner[sel], xe)

            parts += self._chunked(idx[torch.argsort(lengths[idx], stable=True)], tail)
            self.n_cached_tokens += p * len(idx)
        return parts
