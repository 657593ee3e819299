"""The hot loop: candidate ids -> objective scores, XE and per-token activations.

Fast path (:class:`Evaluator`): ids stay on the model's device, right-padded, and are run **without an
attention mask**: in a causal model a real token never attends to the padding after it and position ids
are unchanged, so the result equals the unpadded one while SDPA keeps its fast causal kernel. When XE is
not needed the forward pass stops after the objective's last site. Batches halve on out-of-memory.

Reference path (:func:`reference_evaluate`): one decoded string at a time, freshly tokenized, full
forward, no padding at all. Every reported score is recomputed with it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from .fluency import sequence_xe
from .objectives import Objective
from .prefix_cache import (
    BUCKET_OVERHEAD,
    plan_buckets,
    run_parent,
    run_tail,
    shared_prefix,
    supports_prefix,
)
from ..lm.sites import run_sites

log = logging.getLogger(__name__)


class EvalOutput(NamedTuple):
    """``scores [b]``, ``xe [b]`` (NaN when not computed), ``token_acts [b, s]``, ``valid [b, s]``."""

    scores: torch.Tensor
    xe: torch.Tensor
    token_acts: torch.Tensor
    valid: torch.Tensor


def length_mask(lengths: torch.Tensor, seq: int) -> torch.Tensor:
    """``[b] -> [b, seq]`` bool mask of real (left-aligned) tokens."""
    return torch.arange(seq, device=lengths.device)[None, :] < lengths[:, None]


def pad_right(seqs: list[torch.Tensor], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """List of 1-D id tensors -> ``ids [b, max_len]`` right-padded with ``pad_id`` and ``lengths [b]``."""
    lengths = torch.tensor([len(s) for s in seqs], device=device)
    ids = torch.full((len(seqs), int(lengths.max())), pad_id, dtype=torch.long, device=device)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
    return ids, lengths


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


class Evaluator:
    """Batched evaluation of right-padded candidates.

    Args:
        model: the causal LM (frozen).
        objective: what to score.
        need_xe: compute XE (full forward); otherwise stop at the objective's last site.
        batch_size: candidates per forward pass; halves on out-of-memory.
        prefix_cache: when called with ``parent=``, run the parent once with a key/value cache and run
            each child only from its first position that differs from the parent (see :mod:`.prefix_cache`).
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        *,
        need_xe: bool = True,
        batch_size: int = 256,
        prefix_cache: bool = False,
    ):
        self.model, self.objective, self.need_xe, self.batch_size = model, objective, need_xe, batch_size
        self.prefix_cache = prefix_cache
        self.bucket_overhead = BUCKET_OVERHEAD["cuda" if next(model.parameters()).is_cuda else "cpu"]
        """Cost of one extra forward pass, in child tokens, when grouping children by shared prefix."""
        self.n_evaluated = 0
        self.n_oom = 0
        self.n_cached_tokens = 0
        """Child tokens not recomputed thanks to the prefix cache (summed over calls)."""

    def finish(
        self, acts: dict, ids: torch.Tensor, lengths: torch.Tensor, xe: torch.Tensor | None
    ) -> EvalOutput:
        """Objective on captured ``acts`` (``[b, s, ...]`` per site) of ``ids [b, s]``; XE NaN when None."""
        out = self.objective(acts, length_mask(lengths, ids.shape[1]))
        if xe is None:
            xe = torch.full_like(out.scores, torch.nan)
        return EvalOutput(out.scores.float(), xe.float(), out.token_acts, out.valid)

    @torch.no_grad()
    def _run(self, ids: torch.Tensor, lengths: torch.Tensor) -> EvalOutput:
        acts, logits = run_sites(self.model, self.objective.sites, input_ids=ids, logits=self.need_xe)
        xe = sequence_xe(logits, ids, length_mask(lengths, ids.shape[1])) if self.need_xe else None
        return self.finish(acts, ids, lengths, xe)

    def chunked(self, n: int, fn: Callable[[int, int], EvalOutput]) -> list[EvalOutput]:
        """``fn(i, j)`` over ``[0, n)`` in chunks of ``batch_size``; on out-of-memory halve and retry."""
        parts: list[EvalOutput] = []
        i = 0
        while i < n:
            k = self.batch_size
            try:
                parts.append(fn(i, min(n, i + k)))
            except (torch.OutOfMemoryError, RuntimeError) as e:
                halve_on_oom(self, e)
                continue
            i += k
        return parts

    def __call__(
        self, ids: torch.Tensor, lengths: torch.Tensor, parent: torch.Tensor | None = None
    ) -> EvalOutput:
        """Evaluate ``ids [b, s]`` (right-padded; pad values are ignored) with ``lengths [b]``.

        ``parent [L]``: the ids the candidates were mutated from; used (and only a speed-up) when the
        evaluator was built with ``prefix_cache=True`` and the objective reads per-position sites.
        """
        if parent is not None and self.prefix_cache and len(ids) > 1 and supports_prefix(self.objective):
            out = self._children(parent, ids, lengths)
        else:

            def run(i: int, j: int) -> EvalOutput:
                return self._run(ids[i:j, : int(lengths[i:j].max())], lengths[i:j])

            out = cat_outputs(self.chunked(len(ids), run), ids.shape[1])
        self.n_evaluated += len(ids)
        return out

    @torch.no_grad()
    def _children(self, parent: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor) -> EvalOutput:
        """Prefix-cache path: ``parent [L]``, children ``ids [b, s]``, ``lengths [b]`` -> :class:`EvalOutput`."""
        sites, parent = self.objective.sites, parent.to(ids.device)
        prefix = shared_prefix(parent, ids, lengths)
        buckets = plan_buckets(prefix, lengths, self.bucket_overhead, parent_len=len(parent))
        par = run_parent(self.model, sites, parent, logits=self.need_xe) if buckets[-1][0] > 0 else None
        parts: list[EvalOutput] = []
        order: list[torch.Tensor] = []
        for p, idx in buckets:
            b_ids, b_len = ids[idx, : int(lengths[idx].max())], lengths[idx]

            def run(i: int, j: int, p=p, b_ids=b_ids, b_len=b_len) -> EvalOutput:
                c_ids, c_len = b_ids[i:j, : int(b_len[i:j].max())], b_len[i:j]
                if p == 0 or par is None:
                    return self._run(c_ids, c_len)
                acts, xe = run_tail(self.model, sites, par, p, c_ids, c_len, logits=self.need_xe)
                return self.finish(acts, c_ids, c_len, xe)

            parts.extend(self.chunked(len(idx), run))
            order.append(idx)
            self.n_cached_tokens += p * len(idx)
        out = cat_outputs(parts, ids.shape[1])
        inv = torch.argsort(torch.cat(order))
        return EvalOutput(*(t[inv] for t in out))


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
    )


@torch.no_grad()
def reference_evaluate(model: nn.Module, tokenizer, objective: Objective, texts: list[str]) -> EvalOutput:
    """Score each string on its own: tokenize it afresh, full forward, no padding. Slow and simple."""
    dev = next(model.parameters()).device
    scores, xes, acts, valids = [], [], [], []
    for text in texts:
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]], device=dev)
        mask = torch.ones_like(ids, dtype=torch.bool)
        captured, logits = run_sites(
            model, objective.sites, input_ids=ids, attention_mask=mask.long(), logits=True
        )
        out = objective(captured, mask)
        scores.append(out.scores.float())
        xes.append(sequence_xe(logits, ids, mask).float())
        acts.append(out.token_acts[0])
        valids.append(out.valid[0])
    parts = [EvalOutput(s, x, a[None], v[None]) for s, x, a, v in zip(scores, xes, acts, valids)]
    return cat_outputs(parts, max(len(a) for a in acts))
