"""A cached activation store: one site's activations on a fixed sample of the default corpus.

Any objective at a site (an SAE latent without statistics, a direction, a key-text query direction, a
decoder projection, a callable) gets its top corpus windows and its corpus maximum by scanning this store
(:mod:`featuredream.objectives.dataset`): the forward pass to the site runs once per model and site, later
objectives at that site cost a read of the store and one pass of the objective over it.

The windows are :data:`STORE_TOKENS` tokens of the default corpus' kept documents (64-token windows at
evenly spaced places in each; the documents the XE table uses are held out). The store holds each site's activation as
the engine captures it (``[n, 64, ...]``, float16) in ``cache_dir()/sites/``; 32k tokens of a SmolLM2
residual site are 38 MB.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ..models.identity import model_fingerprint
from ..models.loading import cache_dir
from ..models.sites import Site, run_sites
from .corpus import windows_digest

log = logging.getLogger(__name__)

STORE_TOKENS = 32_768
STORE_CTX = 64
NORM_CAP_MULT = 3.0
"""A site's norm cap is this x the median norm of its activation (as SAE statistics record theirs)."""
CAP_WINDOWS = 64
"""Windows of the default corpus (drawn like the store's, 4096 positions) that give a site's median norm."""


_WINDOWS: dict[tuple[int, int], tuple[object, torch.Tensor]] = {}
"""Store windows made in this process, by (tokenizer id, windows): tokenizing the corpus takes seconds."""


def store_windows(tok, tokens: int | None = None) -> torch.Tensor:
    """:func:`corpus_windows`, made once per tokenizer and size in a process."""
    n = max(1, (STORE_TOKENS if tokens is None else tokens) // STORE_CTX)
    key = (id(tok), n)
    if key not in _WINDOWS or _WINDOWS[key][0] is not tok:
        _WINDOWS[key] = (tok, corpus_windows(tok, n * STORE_CTX))
    return _WINDOWS[key][1]


def corpus_windows(tok, tokens: int) -> torch.Tensor:
    """``[n, 64]`` windows of the default corpus' kept documents (not the held-out ones), ``n = tokens //
    64``, :data:`STORE_TOKENS` by default: the same number from each document, at evenly spaced places (each starts after a whitespace),
    so the sample spans every play and module page without tokenizing the whole corpus."""
    from .corpus import default_corpus

    docs = [d for i, d in enumerate(default_corpus()) if i % 10 != 3]
    n = max(1, tokens // STORE_CTX)
    per_doc = -(-n // len(docs))
    out: list[list[int]] = []
    for text in docs:
        for start in torch.linspace(0, max(0, len(text) - 4000), per_doc).long().tolist():
            ws = text.find(" ", start)
            ids = tok(text[ws + 1 if ws >= 0 else start :][:4000], add_special_tokens=False)["input_ids"]
            if len(ids) >= STORE_CTX:
                out.append(ids[:STORE_CTX])
    return torch.tensor(out[:n])


def _path(model_id: str, site: Site, digest: str) -> Path:
    key = hashlib.sha256(f"{model_id}\n{site.hook_name}\n{site.head}".encode()).hexdigest()[:20]
    return cache_dir() / "sites" / f"{key}-{digest}.safetensors"


def missing_sites(
    model: nn.Module, tok, sites: Sequence[Site], windows: torch.Tensor | None = None
) -> list[Site]:
    """The ``sites`` whose store is not cached yet (building one is a one-time cost: ~50 s for a SmolLM2
    residual site on a 2-core CPU)."""
    windows = store_windows(tok) if windows is None else windows
    model_id, digest = model_fingerprint(model), windows_digest(windows)
    return [s for s in sites if not _path(model_id, s, digest).exists()]


@torch.no_grad()
def site_store(
    model: nn.Module, tok, sites: Sequence[Site], *, windows: torch.Tensor | None = None, batch: int = 32
) -> tuple[torch.Tensor, dict[Site, torch.Tensor]]:
    """``(windows [n, ctx], {site: activations [n, ctx, ...] float16})`` on the store's windows (or
    ``windows``), each site read from the cache or captured (in one pass for the missing ones) and cached."""
    windows = store_windows(tok) if windows is None else windows
    model_id, digest = model_fingerprint(model), windows_digest(windows)
    out, missing = {}, missing_sites(model, tok, sites, windows)
    for s in sites:
        if s not in missing:
            out[s] = load_file(str(_path(model_id, s, digest)))["acts"]
    if missing:
        log.info(
            "activation store: capturing %s on %d windows (once per model and site)", missing, len(windows)
        )
        dev = next(model.parameters()).device
        parts: dict[Site, list[torch.Tensor]] = {s: [] for s in missing}
        for i in tqdm(range(0, len(windows), batch), desc="activation store", unit="batch"):
            acts, _ = run_sites(model, missing, input_ids=windows[i : i + batch].to(dev))
            for s in missing:
                parts[s].append(acts[s].half().cpu())
        for s in missing:
            out[s] = torch.cat(parts[s])
            p = _path(model_id, s, digest)
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_suffix(".tmp")
            save_file({"acts": out[s].contiguous()}, str(tmp), metadata={"model": model_id, "site": str(s)})
            tmp.replace(p)
    return windows, out


_CAPS: dict[tuple[str, str], float] = {}
"""Site norm caps measured in this process, by (model fingerprint, site)."""


def site_norm_cap(model: nn.Module, tok, site: Site) -> float:
    """The norm guard of ``site`` for any objective without a recorded cap: :data:`NORM_CAP_MULT` x the
    median norm of the site's activation over every position of :data:`CAP_WINDOWS` windows of the
    default corpus (:func:`store_windows`). Positions above it are "massive activations" (SmolLM2's first token: a residual norm ~28k
    against a median ~146 at layer 12), never a valid place to read a feature. Measured once per model and
    site (~1 s), then read from memory or ``cache_dir()/sites/`` (JSON)."""
    import json

    model_id = model_fingerprint(model)
    key = (model_id, f"{site.hook_name}|{site.head}")
    if key in _CAPS:
        return _CAPS[key]
    path = _path(model_id, site, "cap").with_suffix(".json")
    if path.exists():
        _CAPS[key] = float(json.loads(path.read_text())["norm_cap"])
        return _CAPS[key]
    windows = store_windows(tok, CAP_WINDOWS * STORE_CTX)
    dev = next(model.parameters()).device
    with torch.no_grad():
        acts, _ = run_sites(model, [site], input_ids=windows.to(dev))
    norms = acts[site].float().flatten(2).norm(dim=-1)
    median = float(norms.median())
    _CAPS[key] = NORM_CAP_MULT * median
    record = {"norm_cap": _CAPS[key], "median_norm": median, "mult": NORM_CAP_MULT, "site": str(site)}
    record |= {"windows_digest": windows_digest(windows), "positions": norms.numel(), "model": model_id}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)
    log.info("norm cap of %s: %.1f (%.0f x the median norm %.1f)", site, _CAPS[key], NORM_CAP_MULT, median)
    return _CAPS[key]
