"""Statistics for any SAE from a corpus, in one streaming pass over all latents (``featuredream stats``).

Per latent: the maximum encoder pre-activation, the maximum decoder projection, the fire rate, and the
top ``k`` examples (one per window) with their whole context, in the layout the shipped SAEs carry (see
:mod:`featuredream.saes.loading`), so warm starts, ``--xe-max pNN``, the ratio to the dataset maximum, the
card and ``inspect examples`` work for any SAE once its statistics exist. Plus the natural-text XE table of
held-out windows of the same corpus, and provenance (model and SAE identity, corpus and windows digests,
tokens, date).

Memory is bounded independently of the corpus: activations are never kept, each latent keeps its running
top ``k`` (``[k, d_sae, ctx + after]`` tokens and per-token activations). The pass is cut into chunks; after
each one its state is written to ``OUT/.stats-partial.safetensors``, so a killed pass resumes
(:attr:`StatsConfig.resume`) losing at most one chunk. Batches are sized to the device and halved on an
out-of-memory error.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from ..checks import check_int
from ..models.padding import pad
from ..text.corpus import windows_digest
from ..text.prose import PROSE_WINDOWS
from ..text.xe_table import REFERENCE_DESCRIPTION
from .activations import latent_values, model_device, site_activations
from .loading import BoundSAE, FeatureStats
from .tally import TopState, default_batch, norm_cap_of, to_feature_tensors, unit_decoder, update_tally

log = logging.getLogger(__name__)

PARTIAL = ".stats-partial.safetensors"


@dataclass(frozen=True)
class StatsConfig:
    """Every knob of the statistics pass (``featuredream stats``)."""

    tokens: int = 600_000
    """Corpus tokens scanned for the per-latent statistics (``tokens // ctx`` windows)."""
    heldout_tokens: int = 40_000
    """Tokens of held-out documents (every 10th): the XE table's windows with ``xe_reference='heldout'``
    (they are drawn either way: the windows digest covers them)."""
    xe_reference: str = "prose"
    """The natural text of the XE table: ``prose`` (the model's table on the prose reference corpus,
    :func:`~.xe_table.reference_xe_table`: the same for every SAE of the model) or ``heldout`` (the
    corpus' own held-out windows)."""
    ctx: int | None = None
    """Tokens per window (None: the SAE's training context, else 64)."""
    top_k_examples: int = 8
    """Top examples kept per latent (one per window)."""
    after: int = 8
    """Tokens kept after the activating token of an example (for display)."""
    seed: int = 0
    """Seed of the window shuffle (the shipped SAEs' statistics use 0)."""
    batch: int | None = None
    """Windows per forward pass (None: sized to the device; halved on out-of-memory)."""
    chunk_tokens: int = 65_536
    """Tokens between checkpoints: a killed pass resumes losing at most this much work."""
    resume: bool = False
    """Resume from ``OUT/.stats-partial.safetensors`` (refused when it came from other windows or SAE)."""

    def check(self) -> None:
        for name in ("tokens", "heldout_tokens", "top_k_examples", "chunk_tokens"):
            check_int(name, getattr(self, name), 1)
        check_int("after", self.after, 0)
        check_int("seed", self.seed, 0)
        if self.ctx is not None:
            check_int("ctx", self.ctx, 2)
        if self.batch is not None:
            check_int("batch", self.batch, 1)
        if self.xe_reference not in ("prose", "heldout"):
            raise ValueError(f"xe_reference {self.xe_reference!r}: valid is 'prose' or 'heldout'")


def check_tokens(cfg: StatsConfig, ctx: int) -> None:
    """``tokens`` must hold ``top_k_examples`` windows and ``heldout_tokens`` 20 windows (a percentile table
    of fewer is noise); ValueError naming the bound otherwise."""
    if cfg.tokens < ctx * cfg.top_k_examples:
        raise ValueError(
            f"--tokens {cfg.tokens} is below what the statistics need: valid is >= {ctx * cfg.top_k_examples} "
            f"({cfg.top_k_examples} windows of {ctx} tokens)"
        )
    if cfg.heldout_tokens < 20 * ctx:
        raise ValueError(
            f"--heldout-tokens {cfg.heldout_tokens} is below what the XE table needs: valid is >= {20 * ctx} "
            f"(20 windows of {ctx} tokens)"
        )


def _run_batches(model, sae, windows, st, cfg, cap, save_chunk) -> None:
    """Stream ``windows[st.done:]`` through the model into ``st``, checkpointing after every chunk."""
    dev = model_device(model)
    w_dec_unit = unit_decoder(sae)
    ctx = windows.shape[1]
    batch = cfg.batch or default_batch(dev, ctx, sae.d_sae)
    per_chunk = max(1, cfg.chunk_tokens // ctx)
    bar = tqdm(
        total=len(windows) * ctx, initial=st.done * ctx, desc="statistics", unit="tok", unit_scale=True
    )
    while st.done < len(windows):
        end = min(len(windows), st.done + per_chunk)
        at = st.done
        while at < end:
            ids = windows[at : min(end, at + batch)].to(dev)
            try:
                x = site_activations(model, sae.site, ids, torch.ones_like(ids, dtype=torch.bool))
                valid = x.float().norm(dim=-1) <= cap
                update_tally(st, sae, x, valid, ids, cfg.after, w_dec_unit)
            except (torch.OutOfMemoryError, RuntimeError) as e:
                if "out of memory" not in str(e).lower() or batch == 1:
                    raise
                batch = max(1, batch // 2)
                log.warning("out of memory: statistics batch halved to %d", batch)
                torch.cuda.empty_cache()
                continue
            at += len(ids)
            bar.update(len(ids) * ctx)
        st.done = end
        save_chunk(st)
    bar.close()


@dataclass(frozen=True)
class StatsInputs:
    """What a pass reads: the model and SAE (with their identities), the corpus' documents and its name."""

    model: nn.Module
    tok: object
    sae: BoundSAE
    docs: list[str]
    corpus: str
    model_id: str
    sae_id: str


@torch.no_grad()
def compute_statistics(inp: StatsInputs, cfg: StatsConfig, out: str | Path) -> FeatureStats:
    """Run the pass and write ``out/features.safetensors`` + ``out/stats.json``; returns the statistics.

    The windows are :func:`~featuredream.text.corpus.split_windows` of the corpus with ``cfg.seed``: on the
    default corpus with the shipped recipe's numbers (600k tokens, 40k held out, seed 0, ctx 64) they are
    the windows the shipped statistics came from.
    """
    from ..models.identity import texts_digest
    from ..text.corpus import split_windows

    cfg.check()
    ctx = cfg.ctx or inp.sae.context_size or 64
    check_tokens(cfg, ctx)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    gen = torch.Generator().manual_seed(cfg.seed)
    wins, held = split_windows(inp.tok, inp.docs, ctx, cfg.tokens, cfg.heldout_tokens, gen)
    if len(wins) < cfg.top_k_examples or len(held) < 20:
        raise ValueError(
            f"the corpus gives {len(wins)} windows to scan and {len(held)} held-out windows of {ctx} tokens: "
            f"valid is a corpus with at least {cfg.top_k_examples} and 20 (every 10th document is held out)"
        )
    digest = windows_digest(torch.cat([wins, held]))
    batch = cfg.batch or default_batch(model_device(inp.model), ctx, inp.sae.d_sae)
    cap = norm_cap_of(inp.model, inp.sae, wins, batch)
    meta = {"windows_digest": digest, "sae": inp.sae_id, "model": inp.model_id, "norm_cap": repr(cap)}
    meta["shape"] = f"{cfg.top_k_examples}x{ctx + cfg.after}"
    partial = out / PARTIAL
    dev = model_device(inp.model)
    if cfg.resume and partial.exists():
        st = TopState.load(partial, meta, dev)
        log.info("resuming at window %d of %d", st.done, len(wins))
    else:
        st = TopState.empty(cfg.top_k_examples, inp.sae.d_sae, ctx + cfg.after, dev)
    _run_batches(inp.model, inp.sae, wins, st, cfg, cap, lambda s: s.save(partial, meta))
    tensors = to_feature_tensors(st, ctx)
    table, n_xe = _xe_table(inp, cfg, held, batch)
    tensors.update(table)
    info = _provenance(inp, cfg, ctx, cap, st, wins, n_xe, digest, texts_digest(inp.docs))
    info["seconds"] = round(time.time() - t0, 1)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "features.safetensors"))
    _write_info(out / "stats.json", info)
    partial.unlink(missing_ok=True)
    log.info("statistics written to %s (%d positions, %.0f s)", out, st.positions, info["seconds"])
    return FeatureStats(tensors, info)


def _xe_table(inp: StatsInputs, cfg: StatsConfig, held: torch.Tensor, batch: int) -> tuple[dict, int]:
    """The natural-text XE table (``cfg.xe_reference``) and the number of windows behind it."""
    from ..models.identity import model_fingerprint
    from ..text.xe_table import model_xe_table, reference_xe_table

    model_id = model_fingerprint(inp.model)
    if cfg.xe_reference == "prose":
        table = reference_xe_table(inp.model, inp.tok, model_id, batch=batch)
        return table, PROSE_WINDOWS
    return model_xe_table(inp.model, held, model_id=model_id, batch=batch), len(held)


def _provenance(inp: StatsInputs, cfg, ctx, cap, st, wins, n_xe, digest, corpus_digest) -> dict:
    return {
        "kind": "featuredream stats",
        "site": inp.sae.site.hook_name,
        "head": inp.sae.site.head,
        "model": inp.model_id,
        "sae": inp.sae_id,
        "sae_name": inp.sae.name,
        "corpus": inp.corpus,
        "corpus_digest": corpus_digest,
        "documents": len(inp.docs),
        "windows_digest": digest,
        "statistics_windows": len(wins),
        "xe_table_windows": n_xe,
        "xe_reference": REFERENCE_DESCRIPTION if cfg.xe_reference == "prose" else "held-out windows",
        "tokens": int(wins.numel()),
        "positions": st.positions,
        "context_len": ctx,
        "norm_cap": cap,
        "dead_fraction": float((st.fires == 0).float().mean()),
        "examples": f"whole context from the window start to the activating token + {cfg.after} after",
        "config": asdict(cfg),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch": torch.__version__,
    }


def _write_info(path: Path, info: dict) -> None:
    """``stats.json``: the pass's provenance; a training record already there (``train_sae``'s FVU, recipe,
    norm cap) is kept, so the shipped SAEs' statistics can be remade in place."""
    old = json.loads(path.read_text()) if path.exists() else {}
    keep = {k: v for k, v in old.items() if "train_config" in old and k not in info}
    path.write_text(json.dumps({**keep, **info}, indent=2))


def shipped_config(info: dict) -> StatsConfig:
    """The pass that remakes a shipped SAE's statistics: its recipe's windows (``train_config`` in its
    ``stats.json``: tokens, held-out tokens, context, seed, examples)."""
    t = info["train_config"]
    return StatsConfig(
        tokens=t["train_tokens"],
        heldout_tokens=t["val_tokens"],
        ctx=t["ctx"],
        top_k_examples=t["top_k_examples"],
        after=t["example_after"],
        seed=t["seed"],
    )


@torch.no_grad()
def verify_examples(model: nn.Module, sae, pairs: list[tuple[int, int]], batch: int = 32) -> torch.Tensor:
    """Score each stored example ``(latent, slot)`` **alone** from its tokens (context up to the
    activating token) with a plain forward pass; returns the relative errors ``[len(pairs)]`` against the
    recorded ``top_values``. Examples of one window share one pass (the longest context among them)."""
    st, dev = sae.stats, next(model.parameters()).device
    by_window: dict[tuple[int, ...], list[int]] = {}
    ctxs = []
    for lat, slot in pairs:
        pos = int(st.top_pos[lat, slot])
        ctxs.append(tuple(st.top_tokens[lat, slot, : pos + 1].tolist()))
    # A context that is a prefix of another (same window, earlier token) is read from the longer one: in
    # lexicographic order the contexts extending ``c`` come right after ``c``.
    uniq = sorted(set(ctxs))
    owner: dict[tuple[int, ...], tuple[int, ...]] = {}
    for j in range(len(uniq) - 1, -1, -1):
        c, nxt = uniq[j], uniq[j + 1] if j + 1 < len(uniq) else None
        owner[c] = owner[nxt] if nxt is not None and nxt[: len(c)] == c else c
    for i, c in enumerate(ctxs):
        by_window.setdefault(owner[c], []).append(i)
    err = torch.full((len(pairs),), math.inf)
    keys = list(by_window)
    for b in range(0, len(keys), batch):
        group = keys[b : b + batch]
        ids, mask = pad([list(g) for g in group], 0, device=dev)
        x = site_activations(model, sae.site, ids, mask)
        pre = latent_values(sae, x, "pre").cpu()  # [b, s, d_sae]
        for row, key in enumerate(group):
            for i in by_window[key]:
                lat, slot = pairs[i]
                pos = int(st.top_pos[lat, slot])
                want = float(st.top_values[lat, slot])
                err[i] = abs(float(pre[row, pos, lat]) - want) / max(abs(want), 1e-6)
    return err
