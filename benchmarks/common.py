"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import torch

from featuredream.lm.corpus import default_corpus
from featuredream.lm.train_sae import make_windows
from featuredream.lm.xe import sequence_xe


@torch.no_grad()
def corpus_xe_quantile(model, tok, length: int = 16, n: int = 256, q: float = 0.9, seed: int = 0) -> float:
    """The ``q`` quantile of XE over ``n`` random ``length``-token windows of the held-out corpus documents."""
    windows, doc_idx = make_windows(tok, default_corpus(), length)
    held = windows[doc_idx % 10 == 3]
    g = torch.Generator().manual_seed(seed)
    sample = held[torch.randperm(len(held), generator=g)[:n]]
    xes = []
    for i in range(0, len(sample), 64):
        ids = sample[i : i + 64]
        logits = model(ids).logits
        xes.append(sequence_xe(logits, ids, torch.ones_like(ids, dtype=torch.bool)))
    return float(torch.quantile(torch.cat(xes), q))


def live_sample(sae, n: int, seed: int = 0, exclude: list[int] = ()) -> list[int]:
    """A fixed-seed sample of ``n`` live latents (fired on the corpus) of a shipped SAE, none in ``exclude``."""
    live = sae.stats.live_latents()
    live = live[~torch.isin(live, torch.tensor(list(exclude), dtype=live.dtype))]
    g = torch.Generator().manual_seed(seed)
    return sorted(live[torch.randperm(len(live), generator=g)[:n]].tolist())


def tune_latents(sae, n: int = 8) -> list[int]:
    """The latents the optimizer's defaults were tuned on (seed 12345): benchmarks/quality.py excludes them."""
    live = sae.stats.live_latents()
    g = torch.Generator().manual_seed(12345)
    return sorted(live[torch.randperm(len(live), generator=g)[:n]].tolist())


@torch.no_grad()
def independent_score(model, tok, sae, latent: int, text: str) -> float:
    """The latent's encoder pre-activation at the last token of ``text``, computed without featuredream's
    evaluator: the residual stream from ``output_hidden_states`` (resid_post of layer L = hidden_states[L+1])
    or the query head from a forward hook on ``q_proj``; the SAE's weights applied by hand."""
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    site = sae.site
    if site.kind == "resid_post":
        x = model(input_ids=ids, output_hidden_states=True).hidden_states[site.layer + 1][0, -1]
    elif site.kind == "attn_q" and site.head is not None:
        got = {}
        attn = model.model.layers[site.layer].self_attn
        h = attn.q_proj.register_forward_hook(lambda m, i, o: got.setdefault("q", o))
        try:
            model(input_ids=ids)
        finally:
            h.remove()
        d = attn.head_dim
        x = got["q"][0, -1, site.head * d : (site.head + 1) * d]
    else:
        raise ValueError(f"independent_score: site {site} not covered")
    s = sae.sae
    return float(((x.float() - s.b_dec.float()) @ s.W_enc[:, latent].float()) + s.b_enc[latent].float())
