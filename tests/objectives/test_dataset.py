"""Dataset starts for every objective: the activation store is scanned for directions, callables, decoder
projections and SAE latents without statistics; each example reproduces its value when scored alone; the
store is captured once per model and site; a cold start scans model samples for their best prefixes."""

from __future__ import annotations

import pytest
import torch
from helpers.massive import SITE as MSITE
from helpers.massive import massive_token_model
from helpers.saes import write_sae_dir

from featuredream import DreamConfig, dream
from featuredream.engine.starts import model_samples, scanned_samples
from featuredream.evaluation.evaluate import reference_evaluate
from featuredream.models.sites import Site
from featuredream.objectives.dataset import dataset_examples, scan_objective, token_values, values_alone
from featuredream.objectives.kinds import (
    DecoderProjection,
    DirectionObjective,
    FunctionObjective,
    SAEEncoder,
)
from featuredream.saes.loading import load_sae
from featuredream.text import activation_store as site_store

SITE = Site("resid_post", 1)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATUREDREAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(site_store, "STORE_TOKENS", 64 * 48)  # 48 windows: a fast store
    return tmp_path / "cache"


def _direction(seed=0):
    return DirectionObjective(SITE, torch.randn(64, generator=torch.Generator().manual_seed(seed)))


def _alone(model, tok, objective, contexts):
    """Each context scored on its own from its decoded text (reference path: reduce='last')."""
    return reference_evaluate(model, tok, objective, [tok.decode(c) for c in contexts]).scores


def test_scan_examples_reproduce_their_values_alone(tiny_llama, tiny_tokenizer, cache, one_thread):
    """The best window ends at the best position and its value is the corpus maximum; every example's
    context scored alone (a plain forward of the decoded text) gives its value (the store is float16)."""
    obj = _direction()
    found = scan_objective(tiny_llama, tiny_tokenizer, obj, k=5)
    assert len(found.contexts) == 5 and found.maximum == found.values[0]
    assert found.values == sorted(found.values, reverse=True)
    alone = _alone(tiny_llama, tiny_tokenizer, obj, found.contexts)
    torch.testing.assert_close(alone, torch.tensor(found.values), rtol=2e-2, atol=2e-2)
    windows, _ = site_store.site_store(tiny_llama, tiny_tokenizer, [SITE])
    assert windows.shape == (48, 64)
    values = token_values(tiny_llama, obj, windows)  # float32 from a fresh pass: the true maximum
    assert found.maximum == pytest.approx(float(values.max()), rel=2e-2, abs=2e-2)
    deep = scan_objective(tiny_llama, tiny_tokenizer, obj, k=5, min_tokens=10)
    assert all(len(c) >= 10 for c in deep.contexts) and deep.maximum == found.maximum


def test_the_store_is_captured_once_per_model_and_site(tiny_llama, tiny_tokenizer, cache, monkeypatch):
    calls = []
    real = site_store.run_sites
    monkeypatch.setattr(site_store, "run_sites", lambda *a, **k: calls.append(1) or real(*a, **k))
    scan_objective(tiny_llama, tiny_tokenizer, _direction(0))
    n = len(calls)
    assert n > 0
    scan_objective(tiny_llama, tiny_tokenizer, _direction(1))  # another direction, same site: read from disk
    assert len(calls) == n
    scan_objective(tiny_llama, tiny_tokenizer, DirectionObjective(Site("resid_post", 0), torch.ones(64)))
    assert len(calls) > n  # another site: captured


def test_every_objective_kind_gets_dataset_starts(tiny_llama, tiny_tokenizer, tmp_path, cache, one_thread):
    """A direction, a callable, a decoder projection and an SAE latent without statistics all dream from
    start='dataset' (refused before this issue) and report the scanned maximum as the ratio's denominator."""
    sae = load_sae(write_sae_dir(tmp_path / "sae", d_sae=32), model=tiny_llama)
    fn = FunctionObjective(lambda acts: acts[SITE][..., :4].sum(-1), [SITE], name="first four")
    cfg = DreamConfig(iters=2, start="dataset", min_tokens=3, max_tokens=12, n_children=8, progress=False)
    for obj in (_direction(), fn, DecoderProjection(sae, 3), SAEEncoder(sae, 5)):
        found = dataset_examples(tiny_llama, tiny_tokenizer, obj, cfg.min_tokens)
        assert found.source.startswith("corpus scan") and found.maximum is not None
        r = dream(tiny_llama, tiny_tokenizer, obj, cfg)
        assert r.start == "dataset" and r.dataset == found.source
        assert r.dataset_max == pytest.approx(found.maximum)
        assert (r.ratio is not None) == (found.maximum > 0)  # a ratio to a negative maximum means nothing


def test_cold_scan_starts_at_each_samples_best_prefix(tiny_llama, tiny_tokenizer, one_thread):
    """The scanned pool holds the best samples cut at their best position (its value: the best over every
    prefix of every sample, at least any whole sample's last-token value) and shorter cuts ending there."""
    obj = _direction()
    cfg = DreamConfig(min_tokens=3, max_tokens=12, n_start_samples=4, cold_samples=16)
    samples = model_samples(tiny_llama, tiny_tokenizer, 16, 12, seed=0)
    pool = scanned_samples(tiny_llama, obj, samples, cfg)
    whole, cuts = pool[:4], pool[4:]
    assert [ids for ids, _ in whole] == samples[:4] and all(src == "samples" for _, src in pool)
    full = torch.tensor([s for s in samples if len(s) == 12])
    values, pos = token_values(tiny_llama, obj, full)[:, 2:].max(1)  # contexts of at least min_tokens
    best = int(values.argmax())
    best_cut = full[best, : int(pos[best]) + 3].tolist()
    assert best_cut in [ids for ids, _ in cuts]
    last = _alone(tiny_llama, tiny_tokenizer, obj, [s.tolist() for s in full])
    cut_scores = _alone(tiny_llama, tiny_tokenizer, obj, [ids for ids, _ in cuts])
    assert float(cut_scores.max()) >= float(last.max()) - 1e-4
    ends = {tuple(ids[-1:]) for ids, _ in cuts}
    assert len(ends) <= cfg.n_start_samples  # every cut ends at one of the chosen best positions


def test_cold_start_uses_the_scan_and_warm_does_not(tiny_llama, tiny_tokenizer, cache, one_thread):
    base = dict(iters=1, min_tokens=3, max_tokens=12, n_children=8, progress=False, n_start_samples=4)
    calls = []
    import featuredream.engine.starts as starts

    real = starts.scanned_samples
    loop_scanned = lambda *a: calls.append(1) or real(*a)  # noqa: E731
    try:
        starts.scanned_samples = loop_scanned
        dream(tiny_llama, tiny_tokenizer, _direction(), DreamConfig(start="samples", **base))
        assert calls == [1]
        dream(tiny_llama, tiny_tokenizer, _direction(), DreamConfig(start="samples", cold_samples=0, **base))
        dream(tiny_llama, tiny_tokenizer, _direction(), DreamConfig(start="auto", **base))
        assert calls == [1]
    finally:
        starts.scanned_samples = real


def test_the_scan_never_reads_a_massive_norm_position(tiny_llama, tiny_tokenizer, cache, one_thread):
    """A direction along a massive-norm token: unguarded, the scan's maximum sits on that token (the hole);
    guarded by the site's cap, neither the maximum nor any example is there, and the maximum reproduces
    when its context is scored alone (a forward pass of the context, no store)."""
    model, token, d = massive_token_model(tiny_llama, tiny_tokenizer)
    hole = scan_objective(model, tiny_tokenizer, DirectionObjective(MSITE, d, norm_guard=False))
    assert hole.maximum_context[-1] == token
    found = scan_objective(model, tiny_tokenizer, DirectionObjective(MSITE, d))
    assert found.maximum < hole.maximum / 10
    assert all(c[-1] != token for c in found.contexts) and found.maximum_context[-1] != token
    fresh = DirectionObjective(MSITE, d, norm_guard=found_cap(model, tiny_tokenizer))
    assert values_alone(model, fresh, [found.maximum_context]) == [pytest.approx(found.maximum, rel=1e-5)]
    assert values_alone(model, fresh, found.contexts) == pytest.approx(found.values, rel=1e-5)
    assert found.maximum >= max(found.values)
    windows, _ = site_store.site_store(model, tiny_tokenizer, [MSITE])
    every = token_values(model, fresh, windows)  # a fresh float32 pass over every valid position
    assert found.maximum == pytest.approx(float(every.max()), rel=2e-2)


def found_cap(model, tok) -> float:
    return site_store.site_norm_cap(model, tok, MSITE)


def test_a_callable_and_a_decoder_projection_without_statistics_are_guarded_too(
    tiny_llama, tiny_tokenizer, tmp_path, cache, one_thread
):
    """Every objective kind without a recorded cap takes its site's: a callable reading the massive
    direction and an SAE (no statistics) whose latent's decoder is that direction."""
    model, token, d = massive_token_model(tiny_llama, tiny_tokenizer)
    fn = FunctionObjective(lambda acts: acts[MSITE].float() @ d, [MSITE], name="along the token")
    sae = load_sae(write_sae_dir(tmp_path / "sae", d_sae=8), model=model)
    with torch.no_grad():
        sae.sae.W_dec[3] = d
    for obj in (fn, DecoderProjection(sae, 3)):
        found = scan_objective(model, tiny_tokenizer, obj)
        assert found.maximum_context[-1] != token and all(c[-1] != token for c in found.contexts)
        assert values_alone(model, obj, [found.maximum_context])[0] == pytest.approx(found.maximum, rel=1e-5)
