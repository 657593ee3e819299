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
from typing import NamedTuple

import torch
from torch import nn

from .fluency import sequence_xe
from .objectives import Objective
from .sites import run_sites

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
    """

    def __init__(
        self, model: nn.Module, objective: Objective, *, need_xe: bool = True, batch_size: int = 256
    ):
        self.model, self.objective, self.need_xe, self.batch_size = model, objective, need_xe, batch_size
        self.n_evaluated = 0
        self.n_oom = 0

    @torch.no_grad()
    def _run(self, ids: torch.Tensor, lengths: torch.Tensor) -> EvalOutput:
        mask = length_mask(lengths, ids.shape[1])
        acts, logits = run_sites(self.model, self.objective.sites, input_ids=ids, logits=self.need_xe)
        out = self.objective(acts, mask)
        if self.need_xe:
            xe = sequence_xe(logits, ids, mask)
        else:
            xe = torch.full_like(out.scores, torch.nan)
        return EvalOutput(out.scores.float(), xe.float(), out.token_acts, out.valid)

    def __call__(self, ids: torch.Tensor, lengths: torch.Tensor) -> EvalOutput:
        """Evaluate ``ids [b, s]`` (right-padded; pad values are ignored) with ``lengths [b]``."""
        parts: list[EvalOutput] = []
        i = 0
        while i < len(ids):
            n = self.batch_size
            chunk_len = int(lengths[i : i + n].max())
            try:
                parts.append(self._run(ids[i : i + n, :chunk_len], lengths[i : i + n]))
            except (torch.OutOfMemoryError, RuntimeError) as e:
                if not _is_oom(e) or self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                self.n_oom += 1
                log.warning("out of memory: batch size halved to %d", self.batch_size)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            i += n
        self.n_evaluated += len(ids)
        seq = ids.shape[1]
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
    seq = max(len(a) for a in acts)
    return EvalOutput(
        torch.cat(scores),
        torch.cat(xes),
        torch.stack([nn.functional.pad(a, (0, seq - len(a))) for a in acts]),
        torch.stack([nn.functional.pad(v, (0, seq - len(v))) for v in valids]),
    )
