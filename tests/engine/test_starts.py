"""Dataset-window starts: a tiny SAE gets statistics with top examples (the statistics engine's tally over windows
of real text), and a dream with ``start='dataset'`` must start from those examples' contexts: suffixes
ending at the activating token, scored (when the whole context fits) at the example's recorded value."""

from __future__ import annotations

import pytest
import torch
from helpers.by_hand import encoder_pre, resid
from helpers.saes import write_sae_dir

from featuredream import DreamConfig, SAEEncoder, dream, load_sae
from featuredream.engine.starts import model_samples, start_pool
from featuredream.saes.loading import FeatureStats
from featuredream.saes.tally import statistics_from_activations

CTX = 12
LATENT = 5
TEXT = (
    "The quick brown fox jumps over the lazy dog. To be, or not to be, that is the question. "
    "Whether 'tis nobler in the mind to suffer the slings and arrows of outrageous fortune. "
    "def parse(text): return json.loads(text) if text else None. The capital of France is Paris. "
    "Once upon a time there was a little girl who lived in a village near the forest. "
)


@pytest.fixture
def dataset_sae(tmp_path, tiny_llama, tiny_tokenizer, one_thread):
    """The fixture SAE with statistics: 3 top examples per latent over 16 windows of 12 tokens."""
    ids = tiny_tokenizer(TEXT * 2, add_special_tokens=False)["input_ids"]
    windows = torch.tensor(ids[: 16 * CTX]).view(16, CTX)
    with torch.no_grad():
        acts = tiny_llama(input_ids=windows, output_hidden_states=True).hidden_states[2]  # resid_post 1
    sae = load_sae(write_sae_dir(tmp_path / "sae", d_sae=32), model=tiny_llama)
    keep = torch.ones(windows.shape, dtype=torch.bool)
    keep[:, :2] = False  # no example ends on a window's first two tokens
    feats = statistics_from_activations(sae, acts, keep, windows, k=3, after=2)
    sae.stats = FeatureStats(feats, {})
    examples = sae.stats.examples(LATENT)
    assert len(examples) == 3
    for toks, pos, _, _ in examples:  # precondition: the contexts are their own tokenization
        ctx = toks[: pos + 1]
        assert 3 <= len(ctx) <= CTX
        assert tiny_tokenizer(tiny_tokenizer.decode(ctx), add_special_tokens=False)["input_ids"] == ctx
    return sae, [(toks[: pos + 1], value) for toks, pos, _, value in examples]


def _cfg(**kw):
    base = dict(min_tokens=3, max_tokens=16, progress=False, start="dataset", seed=0)
    return DreamConfig(**{**base, **kw})


def test_dataset_start_pool_is_every_suffix_ending_at_the_activating_token(
    dataset_sae, tiny_llama, tiny_tokenizer
):
    sae, examples = dataset_sae
    obj = SAEEncoder(sae, LATENT)
    cfg = _cfg()
    pool = start_pool(tiny_llama, tiny_tokenizer, obj, cfg, torch.Generator().manual_seed(0))
    assert pool and {src for _, src in pool} == {"dataset"}
    want = {tuple(ctx[-n:]) for ctx, _ in examples for n in range(cfg.min_tokens, len(ctx) + 1)}
    assert {tuple(ids) for ids, _ in pool} == want
    for ctx, value in examples:  # the whole context, scored alone by hand, is the recorded value
        x = resid(tiny_llama, ctx, "resid_post", 1)
        assert float(encoder_pre(sae, x, LATENT)[-1]) == pytest.approx(value, rel=1e-4, abs=1e-5)


def test_dream_from_the_dataset_starts_from_the_examples(dataset_sae, tiny_llama, tiny_tokenizer):
    sae, examples = dataset_sae
    obj = SAEEncoder(sae, LATENT)
    # one iteration of one child and a buffer larger than the pool: the buffer shows the starts as scored
    r = dream(tiny_llama, tiny_tokenizer, obj, _cfg(iters=1, n_children=1, buffer_size=256))
    assert r.start == "dataset"
    texts = [tiny_tokenizer.decode(ctx) for ctx, _ in examples]
    by_ids = {tuple(p.ids): p for p in r.buffer}
    for ctx, value in examples:  # 3..12 tokens: the whole context fits, and starts at its recorded value
        assert by_ids[tuple(ctx)].activation == pytest.approx(value, rel=1e-4, abs=1e-5)
    not_windows = [p.text for p in r.buffer if not any(t.endswith(p.text) for t in texts)]
    assert len(not_windows) <= 1  # everything else in the buffer is a start (the one child aside)
    assert len(r.buffer) >= len({tuple(ctx[-n:]) for ctx, _ in examples for n in range(3, len(ctx) + 1)})
    assert r.best.activation >= max(v for _, v in examples) - 1e-4


def test_fast_model_samples_draw_from_each_positions_top_k(tiny_llama, tiny_tokenizer, one_thread):
    """The cold start's decoding loop (key/value cache, top-50 draw): every sampled token is among the 50
    most probable non-special next tokens of a plain forward of its sample (a cache read at the wrong
    positions or a draw from the whole vocabulary breaks this), samples are full length, varied, seeded."""
    samples = model_samples(tiny_llama, tiny_tokenizer, 24, 12, seed=3, fast=True)
    assert len(samples) == 24 and all(len(s) == 12 for s in samples)
    assert samples == model_samples(tiny_llama, tiny_tokenizer, 24, 12, seed=3, fast=True)
    assert len({tuple(s) for s in samples}) == 24
    ids = torch.tensor(samples)
    with torch.no_grad():
        logits = tiny_llama(input_ids=ids).logits[:, :-1].float()
    special = tiny_tokenizer.all_special_ids
    assert not set(special) & set(ids.flatten().tolist())
    logits[..., special] = -torch.inf
    top = logits.topk(50, dim=-1).indices  # [b, s-1, 50]
    assert bool((top == ids[:, 1:, None]).any(-1).all())
