"""A second opinion on fluency: another model's XE of a text, as a percentile among natural text.

A search that minimizes one model's cross-entropy can find text that this model finds predictable and
nobody would write. The judge is a model of another family (default: Gemma 3 270M, packaged offline, see
:mod:`.packaged`), **never used inside the search**, so it stays an independent measure:

- a text is tokenized by the judge (its own tokens, no special tokens; a BOS model gets its ``<bos>``
  through :mod:`.bos`) and scored by its mean next-token XE over its ``m`` tokens;
- its **percentile** is the share (0..100, ties counted half) of the judge's reference windows whose first
  ``m`` tokens have a lower XE: the plain-prose reference corpus (:func:`~.prose.prose_windows`, 640
  windows of 64 tokens, half news, half documentation), so 50 reads "as predictable as typical prose" and
  99 "less predictable than 99% of it". Texts longer than 64 judge tokens compare with whole windows.

The reference (``[640, 63]`` prefix XE) is computed once per judge model and cached; the default judge's is
shipped in the package (``data/judges/``), checked against the model and windows it came from.
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

DEFAULT_JUDGE = "gemma3-270m"
FALLBACK_JUDGE = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The judge of a dream whose model is the default judge (the embedded default model, another family)."""
SHIPPED = {DEFAULT_JUDGE: "gemma3-270m.safetensors"}


@dataclass(frozen=True)
class JudgeScore:
    """One text under the judge."""

    xe: float
    """The judge's mean next-token XE over the text's own tokens."""
    percentile: float
    """0..100: share of natural prose windows of the same length with a lower XE (ties half)."""
    tokens: int
    """The text's length in the judge's tokens."""
    judge: str
    """The judge model's name."""

    def to_dict(self) -> dict:
        return {"xe": self.xe, "percentile": self.percentile, "tokens": self.tokens, "judge": self.judge}


def percentile_of(reference: torch.Tensor, xe: float, tokens: int) -> float:
    """The percentile of a text of ``tokens`` tokens with XE ``xe`` among ``reference [n, L-1]`` (prefix XE,
    column ``j`` = first ``j + 2`` tokens): ``100 * (#lower + #equal / 2) / n``; NaN under 2 tokens."""
    if tokens < 2 or xe != xe:
        return float("nan")
    col = reference[:, min(tokens, reference.shape[1] + 1) - 2].double()
    lower = float((col < xe).sum()) + 0.5 * float((col == xe).sum())
    return 100.0 * lower / len(col)


class FluencyJudge:
    """``FluencyJudge(model, tokenizer, name, reference)``; :meth:`load` builds one by name."""

    def __init__(self, model: nn.Module, tokenizer, name: str, reference: torch.Tensor):
        self.model, self.tok, self.name, self.reference = model, tokenizer, name, reference

    @classmethod
    def load(cls, spec: str = "default", *, device=None, dtype="float32") -> FluencyJudge:
        """The judge ``spec``: ``default`` (Gemma 3 270M) or any model :func:`~.models.load_model` takes."""
        from ..models.loading import load_model

        name = DEFAULT_JUDGE if spec == "default" else spec
        model, tok = load_model(name, device=device, dtype=dtype)
        return cls(model, tok, name, judge_reference(model, tok, name))

    @torch.no_grad()
    def xe(self, texts: list[str]) -> list[tuple[float, int]]:
        """``(XE, tokens)`` of each text under the judge (one forward pass per text: no padding)."""
        from ..models.xe import sequence_xe

        dev = next(self.model.parameters()).device
        out = []
        for text in texts:
            ids = self.tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(dev)
            if ids.shape[1] < 2:
                out.append((float("nan"), int(ids.shape[1])))
                continue
            logits = self.model(input_ids=ids, use_cache=False).logits
            out.append((float(sequence_xe(logits, ids, torch.ones_like(ids))[0]), int(ids.shape[1])))
        return out

    def score(self, texts: list[str]) -> list[JudgeScore]:
        """Each text's :class:`JudgeScore`."""
        return [JudgeScore(x, percentile_of(self.reference, x, n), n, self.name) for x, n in self.xe(texts)]


def resolve_judge(
    spec: str | FluencyJudge | None, *, device=None, dreamer: nn.Module | None = None
) -> FluencyJudge | None:
    """``None`` / ``"none"`` -> no judge; a judge -> itself; a name -> :meth:`FluencyJudge.load`.

    A judge that is the dreaming model ``dreamer`` (same weights) is no independent measure: the default judge
    then gives way to :data:`FALLBACK_JUDGE` (said once); a judge named or passed explicitly is kept, with a
    warning."""
    if spec is None or spec == "none":
        return None
    judge = spec if isinstance(spec, FluencyJudge) else FluencyJudge.load(spec, device=device)
    if dreamer is None or not same_weights(judge.model, dreamer):
        return judge
    if spec == "default":
        log.warning(
            "the default judge %s is the dreaming model, so it would not be independent: judging with %s "
            "instead (--judge NAME chooses another)",
            DEFAULT_JUDGE,
            FALLBACK_JUDGE,
        )
        return FluencyJudge.load(FALLBACK_JUDGE, device=device)
    log.warning("the judge %s is the dreaming model: its percentiles are no independent measure", judge.name)
    return judge


def same_weights(a: nn.Module | None, b: nn.Module) -> bool:
    """Whether two models are one model, maybe loaded twice or wrapped (a BOS-conditioned view holds the same
    parameters): as many parameters, and the same input embeddings (shape and first 64 rows)."""
    if a is None or sum(p.numel() for p in a.parameters()) != sum(p.numel() for p in b.parameters()):
        return False
    ea, eb = a.get_input_embeddings().weight, b.get_input_embeddings().weight
    return ea.shape == eb.shape and torch.equal(
        ea[:64].detach().float().cpu(), eb[:64].detach().float().cpu()
    )


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def judge_reference(model: nn.Module, tok, name: str) -> torch.Tensor:
    """The judge's prefix XE ``[640, 63]`` of the prose reference windows: the shipped file when it came
    from this model and these windows, else the cache, else computed (a few minutes on a CPU) and cached."""
    from ..models.identity import model_fingerprint
    from .corpus import windows_digest
    from .prose import prose_windows
    from .xe_table import prefix_xe

    windows = prose_windows(tok)
    ident = {"model": model_fingerprint(model), "windows_digest": windows_digest(windows)}
    for path in _candidates(name, ident):
        table = _read(path, ident)
        if table is not None:
            return table
    log.info("judge %s: scoring %d prose reference windows (once; cached)", name, len(windows))
    table = prefix_xe(model, windows, batch=16, desc="judge reference")
    path = _cache_path(ident)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"prefix_xe": table.contiguous()}, str(path), metadata=ident)
    return table


def _cache_path(ident: dict) -> Path:
    return cache_dir() / "judge" / _key(ident["model"]) / f"{ident['windows_digest']}.safetensors"


def shipped_path(name: str) -> Path | None:
    """Where the package ships ``name``'s reference (None: not shipped)."""
    if name not in SHIPPED:
        return None
    return Path(str(resources.files("featuredream") / "data" / "judges" / SHIPPED[name]))


def _candidates(name: str, ident: dict) -> list[Path]:
    shipped = shipped_path(name)
    return [p for p in (shipped, _cache_path(ident)) if p is not None and p.exists()]


def _read(path: Path, ident: dict) -> torch.Tensor | None:
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        if any(meta.get(k) != v for k, v in ident.items()):
            log.info("judge reference %s came from another model or windows: not used", path)
            return None
        return f.get_tensor("prefix_xe").float()
