"""Where a dream starts: the user's prompt, windows of the objective's top dataset examples ending at the
activating token (from its SAE's statistics, or a corpus scan for any other objective: see
:mod:`.corpus_scan`), and short samples from the model itself. All candidates are scored in one batch by the
optimizer, which keeps the best (a cheap beam); the result reports which source the best start came from.
"""

from __future__ import annotations

import inspect
import logging

import torch
from torch import nn

from ..objectives.dataset import DatasetExamples, dataset_examples, token_values, top_windows
from .config import DreamConfig

log = logging.getLogger(__name__)

# Openers for model samples: fixed, common, so the start pool is deterministic and fluent.
_OPENERS = ("The", "In", "I", "It", "When", "This", "We", "A", "If", "He", "She", "They")


def start_lengths(min_tokens: int, max_tokens: int, context: int) -> list[int]:
    """Lengths at which a dataset context of ``context`` tokens is cut for starts: every length up to 16,
    then 20, 24, 32, 40, 48, 64 and the whole context, within ``min_tokens..max_tokens``."""
    want = set(range(min_tokens, 17)) | {20, 24, 32, 40, 48, 64, context}
    return sorted(n for n in want if min_tokens <= n <= min(max_tokens, context))


def dataset_windows(examples: DatasetExamples | None, max_tokens: int, min_tokens: int) -> list[list[int]]:
    """For each top dataset example: its real context ending at the activating token, cut to several lengths
    (:func:`start_lengths`; shorter contexts often read more fluently, longer ones keep more of the
    activation; the optimizer scores them all in one batch)."""
    if examples is None:
        return []
    out = []
    for window in examples.contexts:
        out += [window[-n:] for n in start_lengths(min_tokens, max_tokens, len(window))]
    return out


def check_context(cfg: DreamConfig, objective) -> None:
    """``max_tokens`` may go up to the SAE's training context (its statistics and features were measured
    on windows that long); ValueError above it."""
    ctx = getattr(getattr(objective, "sae", None), "context_size", None)
    if ctx is not None and cfg.max_tokens > ctx:
        raise ValueError(
            f"max_tokens={cfg.max_tokens} exceeds the SAE's context of {ctx} tokens: valid are "
            f"{cfg.min_tokens}..{ctx}"
        )


def model_samples(
    model: nn.Module, tokenizer, n: int, length: int, seed: int, fast: bool = False
) -> list[list[int]]:
    """``n`` short sampled continuations (``length`` tokens in all) of fixed openers, top-k 50 sampling.
    ``fast``: a plain decoding loop that draws from the top 50 logits only, never a special token (a model
    that takes a key/value cache and ``logits_to_keep``; else ``generate``, which draws from a softmax over the
    whole vocabulary): 1.98x ``generate``'s speed for 256 samples of 16 tokens (benchmarks/cold_sampler.json)."""
    if n <= 0:
        return []
    dev = next(model.parameters()).device
    starts = [tokenizer(o, add_special_tokens=False)["input_ids"][:1] for o in _OPENERS[:n]]
    starts += [starts[i % len(starts)] for i in range(len(starts), n)]
    ids = torch.tensor(starts, device=dev)
    torch.manual_seed(seed)
    special = set(tokenizer.all_special_ids)
    if fast and "logits_to_keep" in inspect.signature(model.forward).parameters:
        out = _sample_top_k(model, ids, length - 1, sorted(special))
    else:
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                top_k=50,
                max_new_tokens=length - 1,
                min_new_tokens=length - 1,
                pad_token_id=tokenizer.pad_token_id,
            )
    return [[t for t in row.tolist() if t not in special] for row in out]


@torch.no_grad()
def _sample_top_k(model: nn.Module, ids: torch.Tensor, n_new: int, banned: list[int], k: int = 50):
    """``ids [b, s]`` and ``n_new`` tokens sampled after them from the ``k`` most probable (``banned`` ids
    never), with a key/value cache: ``[b, s + n_new]``."""
    from transformers import DynamicCache

    from ..evaluation.prefix_cache import cache_argument

    cache = {cache_argument(model): DynamicCache()}
    x, out = ids, [ids]
    for _ in range(n_new):
        logits = model(input_ids=x, use_cache=True, logits_to_keep=1, **cache).logits[:, -1].float()
        logits[:, banned] = -torch.inf
        top, idx = logits.topk(k, dim=-1)
        x = idx.gather(1, torch.multinomial(torch.softmax(top, dim=-1), 1))
        out.append(x)
    return torch.cat(out, dim=1)


def scanned_samples(model: nn.Module, objective, samples: list[list[int]], cfg: DreamConfig):
    """Cold-start pool entries ``(ids, 'samples')`` from model samples: ``n_start_samples`` whole samples,
    and the ``n_start_samples`` samples whose best prefix scores highest (one pass scores every prefix of
    every full-length sample through its per-token values), each cut at its best position and at shorter
    lengths ending there (:func:`start_lengths`)."""
    pool = [(s, "samples") for s in samples[: cfg.n_start_samples]]
    full = [s for s in samples if len(s) == cfg.max_tokens]
    if full:
        wins = torch.tensor(full)
        values = token_values(model, objective, wins)
        top = top_windows(wins, values, max(1, cfg.n_start_samples), "samples", cfg.min_tokens)
        for w in top.contexts:
            pool += [(w[-m:], "samples") for m in start_lengths(cfg.min_tokens, cfg.max_tokens, len(w))]
    return pool


def start_pool(
    model: nn.Module,
    tokenizer,
    objective,
    cfg: DreamConfig,
    gen: torch.Generator,
    examples: DatasetExamples | None = None,
) -> list[tuple[list[int], str]]:
    """Candidate starts as ``(ids, source)``; ``source`` is 'prompt', 'dataset' or 'samples'. Dataset starts
    come from ``examples``, else from :func:`~.corpus_scan.dataset_examples` (the SAE's statistics, or a scan
    of the corpus for any other objective)."""
    pool: list[tuple[list[int], str]] = []
    if cfg.init_prompt and cfg.start in ("prompt", "auto"):
        ids = tokenizer(cfg.init_prompt, add_special_tokens=False)["input_ids"]
        if not cfg.min_tokens <= len(ids) <= cfg.max_tokens:
            raise ValueError(
                f"init_prompt has {len(ids)} tokens: valid is {cfg.min_tokens}..{cfg.max_tokens} (min_tokens..max_tokens)"
            )
        pool.append((ids, "prompt"))
    if cfg.start in ("dataset", "auto"):
        if examples is None:
            examples = dataset_examples(model, tokenizer, objective, cfg.min_tokens)
        windows = dataset_windows(examples, cfg.max_tokens, cfg.min_tokens)
        if cfg.start == "dataset" and not windows:
            raise ValueError(
                f"start='dataset' found no corpus example of {objective.name} within {cfg.min_tokens}.."
                f"{cfg.max_tokens} tokens (every position invalid?): valid starts are 'prompt', 'samples', 'auto'"
            )
        pool += [(w, "dataset") for w in windows]
    if cfg.start in ("samples", "auto"):
        length = (cfg.min_tokens + cfg.max_tokens) // 2
        pool += [
            (s, "samples") for s in model_samples(model, tokenizer, cfg.n_start_samples, length, cfg.seed)
        ]
    return pool


def sample_starts(model: nn.Module, tokenizer, objective, cfg: DreamConfig, dataset, made: dict):
    """Model samples for a feature's start pool as ``(ids, 'samples')``; ``made`` caches them per (seed,
    number, length, cold) for all features of a run. A cold start (no dataset examples) makes
    ``cold_samples`` of ``max_tokens`` tokens and scans them (:func:`scanned_samples`)."""
    cold = cfg.cold_samples > 0 and not (dataset is not None and dataset.contexts)
    n = cfg.cold_samples if cold else cfg.n_start_samples
    length = cfg.max_tokens if cold else (cfg.min_tokens + cfg.max_tokens) // 2
    key = (cfg.seed, n, length, cold)
    if key not in made:
        made[key] = model_samples(model, tokenizer, n, length, cfg.seed, fast=cold)
    if cold:
        return scanned_samples(model, objective, made[key], cfg)
    return [(s, "samples") for s in made[key]]
