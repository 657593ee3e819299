"""The hot loop: candidate ids -> objective scores, XE and per-token activations.

Fast path (:class:`Evaluator`): ids stay on the model's device, right-padded, and are run **without an
attention mask**: in a causal model a real token never attends to the padding after it and position ids
are unchanged, so the result equals the unpadded one while SDPA keeps its fast causal kernel. Rows may
belong to different members of an :class:`~.group.ObjectiveGroup` (``owner [b]``): one forward pass scores
children of K features, each on its own. Rows are sorted by length so each chunk pads little. When XE is
not needed the forward pass stops after the objective's last site. With the prefix cache, children run
only from their first token that differs from their own parent (:mod:`.prefix_cache`). Batches halve on
out-of-memory.

Reference path (:func:`reference_evaluate`): one decoded string at a time, freshly tokenized, full
forward, no padding at all. Every reported score is recomputed with it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from ..models.padding import length_mask, pad
from ..models.sites import run_sites
from ..models.tl import as_model
from ..models.xe import xe_and_peak
from ..objectives.group import ObjectiveGroup, as_group
from ..objectives.kinds import Objective, resolve_norm_caps
from .prefix_cache import (
    BUCKET_OVERHEAD,
    plan_buckets,
    run_parents,
    run_tails,
    shared_prefixes,
    supports_prefix,
)

log = logging.getLogger(__name__)

__all__ = [
    "EvalOutput",
    "Evaluator",
    "cat_outputs",
    "cascade",
    "halve_on_oom",
    "reference_evaluate",
]


class EvalOutput(NamedTuple):
    """``scores [b]``, ``xe [b]`` (NaN when not computed), ``token_acts [b, s]`` (None where the loop only
    needs scores: its batches keep no per-token values), ``valid [b, s]`` (positions the norm guard kept),
    ``peak [b]`` (the largest token surprisal; NaN where XE was not computed)."""

    scores: torch.Tensor
    xe: torch.Tensor
    token_acts: torch.Tensor | None
    valid: torch.Tensor
    peak: torch.Tensor | None = None


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


class Evaluator:
    """Batched evaluation of right-padded candidates.

    Args:
        model: the causal LM (frozen).
        objective: an :class:`~.objectives.Objective` (a group of one) or an :class:`~.group.ObjectiveGroup`.
        need_xe: compute XE (full forward); otherwise stop at the objective's last site.
        batch_size: candidates per forward pass; halves on out-of-memory.
        prefix_cache: when called with parents, run them once with a key/value cache and run each child
            only from its first position that differs from its own parent (see :mod:`.prefix_cache`).
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective | ObjectiveGroup,
        *,
        need_xe: bool = True,
        batch_size: int = 256,
        prefix_cache: bool = False,
    ):
        model = as_model(model)
        self.model, self.objective, self.need_xe, self.batch_size = (
            model,
            as_group(objective),
            need_xe,
            batch_size,
        )
        self.prefix_cache = prefix_cache and supports_prefix(self.objective, model)
        self.bucket_overhead = BUCKET_OVERHEAD["cuda" if next(model.parameters()).is_cuda else "cpu"]
        """Cost of one extra forward pass, in child tokens, when grouping children by shared prefix."""
        self.n_evaluated = 0
        self.n_oom = 0
        self.n_cached_tokens = 0
        """Child tokens not recomputed thanks to the prefix cache (summed over calls)."""

    def finish(
        self, acts: dict, ids: torch.Tensor, lengths: torch.Tensor, owner: torch.Tensor, xe
    ) -> EvalOutput:
        """Objective on captured ``acts`` (``[b, s, ...]`` per site) of ``ids [b, s]``; ``xe``: ``(xe [b],
        peak [b])`` or None (both NaN)."""
        out = self.objective(acts, length_mask(lengths, ids.shape[1]), owner)
        nan = torch.full_like(out.scores, torch.nan)
        xe, peak = (nan, nan) if xe is None else xe
        return EvalOutput(out.scores.float(), xe.float(), out.token_acts, out.valid, peak.float())

    @torch.no_grad()
    def _run(self, ids: torch.Tensor, lengths: torch.Tensor, owner: torch.Tensor) -> EvalOutput:
        acts, logits = run_sites(self.model, self.objective.sites, input_ids=ids, logits=self.need_xe)
        xe = xe_and_peak(logits, ids, length_mask(lengths, ids.shape[1])) if self.need_xe else None
        return self.finish(acts, ids, lengths, owner, xe)

    def chunked(
        self, idx: torch.Tensor, fn: Callable[[torch.Tensor], EvalOutput]
    ) -> list[tuple[torch.Tensor, EvalOutput]]:
        """``fn(rows)`` over the rows ``idx`` in chunks of ``batch_size``; on out-of-memory halve and retry."""
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
        owner: torch.Tensor | None = None,
        parents: dict[int, torch.Tensor] | None = None,
        *,
        parent: torch.Tensor | None = None,
    ) -> EvalOutput:
        """Evaluate ``ids [b, s]`` (right-padded; pad values are ignored) with ``lengths [b]``.

        ``owner [b]``: which member of the group scores each row (default: member 0). ``parents[k]``
        (``[L]``): the ids member ``k``'s rows were mutated from (``parent``: the one parent of a group of
        one); only a speed-up, used with ``prefix_cache`` (rows whose member has no parent run in full).
        """
        if owner is None:
            owner = torch.zeros(len(ids), dtype=torch.long, device=ids.device)
        if parent is not None:
            parents = {0: parent}

        def plain(rows: torch.Tensor) -> EvalOutput:
            return self._run(ids[rows, : int(lengths[rows].max())], lengths[rows], owner[rows])

        if parents and self.prefix_cache and len(ids) > 1:
            parts = self._cached(ids, lengths, owner, parents, plain)
        else:  # similar lengths share a chunk: little padding
            parts = self.chunked(torch.argsort(lengths, stable=True), plain)
        self.n_evaluated += len(ids)
        out = cat_outputs([p for _, p in parts], ids.shape[1])
        inv = torch.argsort(torch.cat([rows for rows, _ in parts]))
        return EvalOutput(*(t[inv] for t in out))

    @torch.no_grad()
    def _cached(self, ids, lengths, owner, parents, plain) -> list[tuple[torch.Tensor, EvalOutput]]:
        """Prefix-cache path: each child from its first token that differs from its own parent."""
        used = sorted(k for k in set(owner.tolist()) if k in parents)
        local = torch.full((len(self.objective),), -1, dtype=torch.long)
        local[used] = torch.arange(len(used))
        rows = local[owner.cpu()].to(ids.device)  # each child's parent row (-1: none)
        if not used:
            return self.chunked(torch.argsort(lengths, stable=True), plain)
        par_ids, par_mask = pad([parents[k].to(ids.device) for k in used], 0, device=ids.device)
        par_len = par_mask.sum(1)
        prefix = shared_prefixes(par_ids, par_len, rows, ids, lengths)
        buckets = plan_buckets(prefix, lengths, self.bucket_overhead, parent_len=int(par_len.sum()))
        if buckets[-1].start == 0:
            return self.chunked(torch.argsort(lengths, stable=True), plain)
        sites = self.objective.sites
        par = run_parents(self.model, sites, [parents[k] for k in used], logits=self.need_xe)
        parts = []
        for p, idx in buckets:

            def tail(sel: torch.Tensor, p=p) -> EvalOutput:
                c_ids, c_len = ids[sel, : int(lengths[sel].max())], lengths[sel]
                if p == 0:
                    return self._run(c_ids, c_len, owner[sel])
                t = run_tails(self.model, sites, par, rows[sel], p, c_ids, c_len, logits=self.need_xe)
                xe = None if t.xe is None else (t.xe, t.peak)
                return self.finish(t.acts, c_ids, c_len, owner[sel], xe)

            parts += self.chunked(idx[torch.argsort(lengths[idx], stable=True)], tail)
            self.n_cached_tokens += p * len(idx)
        return parts


def halve_on_oom(evaluator, error: BaseException) -> None:
    """After ``error`` in a batch: halve ``evaluator.batch_size`` and free the CUDA cache when it is an
    out-of-memory error and the batch can shrink; otherwise re-raise it."""
    if not _is_oom(error) or evaluator.batch_size == 1:
        raise error
    evaluator.batch_size = max(1, evaluator.batch_size // 2)
    evaluator.n_oom = getattr(evaluator, "n_oom", 0) + 1
    log.warning("out of memory: batch size halved to %d", evaluator.batch_size)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def cat_outputs(parts: list[EvalOutput], seq: int) -> EvalOutput:
    """Concatenate outputs along the batch, right-padding ``token_acts`` / ``valid`` to ``seq``."""
    return EvalOutput(
        torch.cat([p.scores for p in parts]),
        torch.cat([p.xe for p in parts]),
        torch.cat([nn.functional.pad(p.token_acts, (0, seq - p.token_acts.shape[1])) for p in parts]),
        torch.cat([nn.functional.pad(p.valid, (0, seq - p.valid.shape[1])) for p in parts]),
        torch.cat([_peak(p) for p in parts]),
    )


def _peak(out: EvalOutput) -> torch.Tensor:
    return out.peak if out.peak is not None else torch.full_like(out.scores, torch.nan)


@torch.no_grad()
def reference_evaluate(model: nn.Module, tokenizer, objective: Objective, texts: list[str]) -> EvalOutput:
    """Score each string on its own: tokenize it afresh, full forward, no padding. Slow and simple."""
    model = as_model(model, tokenizer)
    resolve_norm_caps(model, tokenizer, objective)
    dev = next(model.parameters()).device
    scores, xes, acts, valids, peaks = [], [], [], [], []
    for text in texts:
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]], device=dev)
        mask = torch.ones_like(ids, dtype=torch.bool)
        captured, logits = run_sites(
            model, objective.sites, input_ids=ids, attention_mask=mask.long(), logits=True
        )
        out = objective(captured, mask)
        scores.append(out.scores.float())
        xe, peak = xe_and_peak(logits, ids, mask)
        xes.append(xe.float())
        peaks.append(peak.float())
        acts.append(out.token_acts[0])
        valids.append(out.valid[0])
    parts = [
        EvalOutput(s, x, a[None], v[None], pk) for s, x, a, v, pk in zip(scores, xes, acts, valids, peaks)
    ]
    return cat_outputs(parts, max(len(a) for a in acts))


def cascade(
    scorer: Evaluator, full: Evaluator, ids, lengths, owner, bound: torch.Tensor, parents
) -> EvalOutput:
    """The cascade: rows with a bound (``bound [n]``, float64) are scored to the objective's layer by
    ``scorer`` first, and XE is finished by ``full`` only for those whose score is above their bound (XE =
    +inf for the others, which then never enter a buffer). Rows without a bound (NaN): one ``full`` pass."""
    direct = torch.isnan(bound)
    scores = torch.full((len(ids),), torch.nan)
    valid = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
    go = direct.clone()
    casc = (~direct).nonzero().squeeze(1)
    if len(casc):
        c = casc.to(ids.device)
        first = scorer(ids[c], lengths[c], owner[c], parents)
        scores[casc], valid[c] = first.scores.cpu(), first.valid
        go[casc] = first.scores.double().cpu() > bound[casc]
    xe = torch.full((len(ids),), torch.inf)
    peak = torch.full((len(ids),), torch.nan)
    fin = go.nonzero().squeeze(1)
    if len(fin):
        f = fin.to(ids.device)
        out = full(ids[f], lengths[f], owner[f], parents)
        xe[fin] = out.xe.cpu()
        peak[fin] = out.peak.cpu()
        d = direct[fin]
        scores[fin[d]] = out.scores.cpu()[d]
        valid[f[d.to(ids.device)]] = out.valid[d.to(ids.device)]
    return EvalOutput(scores, xe, None, valid, peak)
