"""What natural prose of each length looks like to the dreaming model: the yardstick of a readable dream.

From the plain-prose reference windows (:func:`~.prose.prose_windows`: 640 windows of 64 tokens, news and
documentation, held out from SAE training), the model's surprisal of every token (its next-token XE) gives,
for a text of ``L`` tokens:

- ``xe_median[L]``: the median XE of natural ``L``-token text (XE falls with length, so a prompt is compared
  with text of its own length);
- ``peak_limit[L]``: the :data:`PEAK_PCT` percentile of natural text's *largest* token surprisal over ``L``
  tokens: a prompt with a token far more surprising than natural text ever shows at that length reads wrong
  even when its mean XE is low;
- ``repeat_limit[L]``: the :data:`REPEAT_PCT` percentile of natural text's repeated bigrams and immediate
  token repeats: degenerate repetition ("the the", "a b a b") is predictable, so a low XE rewards it.

:meth:`Readability.loss` ranks prompts by how readable they are (lower is better): the XE above the natural
median at their length, plus :data:`GUARD` for each guard broken, so a guard-breaking prompt ranks after
every prompt that keeps both. Only the dreaming model is used: the fluency judge stays independent.

The surprisal matrix (``[640, 63]``) is computed once per model (~20 s for SmolLM2 on a 2-core CPU) and
cached; the default model's ships in the package, checked against the model and windows it came from.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..models.loading import cache_dir

log = logging.getLogger(__name__)

PEAK_PCT = 95.0
REPEAT_PCT = 95.0
GUARD = 100.0
"""Added to the loss per broken guard: more than any XE difference between two prompts."""
SHIPPED = "smollm2-135m-instruct.safetensors"


def repeats(ids: list[int]) -> int:
    """Degenerate repetition in ``ids``: bigrams seen earlier in the text plus tokens equal to the one before."""
    pairs = list(zip(ids, ids[1:]))
    return (len(pairs) - len(set(pairs))) + sum(a == b for a, b in pairs)


def prefix_repeats(ids: list[int]) -> list[int]:
    """``[repeats(ids[:j]) for j in 1..len(ids)]``, in one pass."""
    seen: set[tuple[int, int]] = set()
    out, n = [0], 0
    for a, b in zip(ids, ids[1:]):
        n += ((a, b) in seen) + (a == b)
        seen.add((a, b))
        out.append(n)
    return out


@dataclass(frozen=True)
class Readability:
    """Natural prose by length (index = tokens, ``[L + 1]`` each, float64): see the module doc."""

    xe_median: torch.Tensor
    peak_limit: torch.Tensor
    repeat_limit: torch.Tensor

    @classmethod
    def from_reference(
        cls,
        surprisal: torch.Tensor,
        windows: torch.Tensor,
        peak_pct: float = PEAK_PCT,
        repeat_pct: float = REPEAT_PCT,
    ) -> Readability:
        """From ``surprisal [n, L-1]`` (token ``t+1``'s XE given the first ``t+1`` tokens) of ``windows [n, L]``."""
        n, m = surprisal.shape
        s = surprisal.double()
        mean = s.cumsum(1) / torch.arange(1, m + 1, dtype=torch.float64)  # [n, m]: first j+2 tokens
        peak = s.cummax(1).values
        reps = torch.tensor([prefix_repeats(w.tolist())[1:] for w in windows], dtype=torch.float64)

        def by_length(x: torch.Tensor, q: float) -> torch.Tensor:
            col = torch.quantile(x, q / 100.0, dim=0)  # [m]: lengths 2..m+1
            return torch.cat([col[:1], col[:1], col])  # index 0, 1 read the 2-token value

        return cls(by_length(mean, 50.0), by_length(peak, peak_pct), by_length(reps, repeat_pct))

    def _at(self, table: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return table[lengths.long().clamp(0, len(table) - 1)]

    def excess(self, xe: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``[n]`` float64: XE above natural text's median at each prompt's length."""
        return xe.double() - self._at(self.xe_median, lengths)

    def broken(
        self, peak: torch.Tensor, reps: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``([n], [n])`` bool: a token more surprising than ``peak_limit[L]`` (a NaN peak: not computed, not
        broken), and more repeats than ``repeat_limit[L]``."""
        return peak.double() > self._at(self.peak_limit, lengths), reps.double() > self._at(
            self.repeat_limit, lengths
        )

    def loss(
        self,
        xe: torch.Tensor,
        peak: torch.Tensor,
        reps: torch.Tensor,
        lengths: torch.Tensor,
        *,
        guards: tuple[bool, bool] = (True, True),
    ) -> torch.Tensor:
        """``[n]`` float64, lower is more readable: :meth:`excess` plus :data:`GUARD` for each guard broken
        (:meth:`broken`; ``guards`` turns the surprisal and the repetition guard on or off)."""
        out = self.excess(xe, lengths)
        for on, bad in zip(guards, self.broken(peak, reps, lengths)):
            if on:
                out = out + GUARD * bad.double()
        return out

    def describe(self, lo: int, hi: int) -> dict:
        """JSON record of the yardstick at lengths ``lo..hi``."""
        rng = range(lo, hi + 1)
        return {
            "xe_median": {n: round(float(self.xe_median[min(n, len(self.xe_median) - 1)]), 4) for n in rng},
            "peak_limit": {
                n: round(float(self.peak_limit[min(n, len(self.peak_limit) - 1)]), 4) for n in rng
            },
            "repeat_limit": {n: float(self.repeat_limit[min(n, len(self.repeat_limit) - 1)]) for n in rng},
            "peak_pct": PEAK_PCT,
            "repeat_pct": REPEAT_PCT,
        }


_MADE: dict[str, Readability] = {}
"""Yardsticks made in this process, by model fingerprint."""


def readability(model: nn.Module, tok) -> Readability:
    """The dreaming model's :class:`Readability` on the prose reference (see :func:`prose_surprisal`), made
    once per model in a process."""
    from ..models.identity import model_fingerprint

    key = model_fingerprint(model)
    if key not in _MADE:
        surprisal, windows = prose_surprisal(model, tok)
        _MADE[key] = Readability.from_reference(surprisal, windows)
    return _MADE[key]


def prose_surprisal(model: nn.Module, tok) -> tuple[torch.Tensor, torch.Tensor]:
    """``(surprisal [n, L-1], windows [n, L])`` of the prose reference under ``model``: the shipped file when it
    came from this model and these windows, else the cache, else computed once and cached."""
    from ..models.identity import model_fingerprint
    from .corpus import windows_digest
    from .prose import prose_windows

    windows = prose_windows(tok)
    ident = {"model": model_fingerprint(model), "windows_digest": windows_digest(windows)}
    for path in (shipped_path(), _cache_path(ident)):
        table = _read(path, ident) if path.exists() else None
        if table is not None:
            return table, windows
    log.info("readability: the model's surprisal of %d prose windows (once; cached)", len(windows))
    table = token_surprisal(model, windows)
    path = _cache_path(ident)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"surprisal": table.half().contiguous()}, str(tmp), metadata=ident)
    tmp.replace(path)
    return _read(path, ident), windows


@torch.no_grad()
def token_surprisal(model: nn.Module, windows: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """``[n, L-1]`` float32: each window's next-token XE at every position (one plain forward pass each)."""
    from tqdm.auto import tqdm

    from ..models.xe import token_xe

    dev = next(model.parameters()).device
    out = []
    for i in tqdm(range(0, len(windows), batch), desc="readability reference", unit="batch", disable=None):
        ids = windows[i : i + batch].to(dev)
        xe, _ = token_xe(
            model(input_ids=ids, use_cache=False).logits, ids, torch.ones_like(ids, dtype=torch.bool)
        )
        out.append(xe.float().cpu())
    return torch.cat(out)


def shipped_path() -> Path:
    """The default model's reference, shipped in the package (``scripts/readability_reference.py``)."""
    return Path(str(resources.files("featuredream") / "data" / "readability" / SHIPPED))


def _cache_path(ident: dict) -> Path:
    key = hashlib.sha256(ident["model"].encode()).hexdigest()[:16]
    return cache_dir() / "readability" / key / f"{ident['windows_digest']}.safetensors"


def _read(path: Path, ident: dict) -> torch.Tensor | None:
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        if any(meta.get(k) != v for k, v in ident.items()):
            return None
        return f.get_tensor("surprisal").float()
