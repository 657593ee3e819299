"""Multi-feature dreaming: the batched pieces equal their single-feature counterparts, and a K-feature run
equals K single runs with the same seeds (same prompts, scores within float tolerance)."""

import pytest
import torch

from featuredream.engine.config import DreamConfig
from featuredream.engine.dream import dream, dream_features, dream_many
from featuredream.engine.results import FeatureError
from featuredream.evaluation.evaluate import Evaluator
from featuredream.evaluation.parent_grads import batched_parent_signals
from featuredream.models.loading import embed_scale
from featuredream.models.padding import pad
from featuredream.models.sites import run_sites
from featuredream.objectives.group import MultiLatentObjective
from featuredream.objectives.kinds import make_objective

FAST = dict(
    iters=6, n_children=24, min_tokens=3, max_tokens=14, progress=False, n_start_samples=3, gcg_topk=32
)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here on one thread (conftest.one_thread)."""


PROMPTS = ["The quick brown fox jumps", "To be, or not to be, that is", "Once upon a time"]


def _ids(tok, text):
    return torch.tensor(tok(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("kind,reduce", [("encoder", "last"), ("encoder", "max"), ("decoder", "mean")])
def test_multi_objective_scores_every_latent_like_single_objectives(
    tiny_llama, tiny_tokenizer, tiny_sae, kind, reduce
):
    latents = [5, 0, 77, 12]
    multi = MultiLatentObjective(tiny_sae, latents, kind, reduce)
    ids, mask = pad([_ids(tiny_tokenizer, t) for t in PROMPTS], 0)
    lengths = mask.sum(1)
    ev = Evaluator(tiny_llama, multi.singles[0], need_xe=False)
    from featuredream.models.padding import length_mask
    from featuredream.models.sites import run_sites

    acts, _ = run_sites(tiny_llama, multi.sites, input_ids=ids)
    mask = length_mask(lengths, ids.shape[1])
    all_k = multi(acts, mask)
    assert all_k.scores.shape == (3, 4) and all_k.token_acts.shape == (*ids.shape, 4)
    for k, lat in enumerate(latents):
        single = make_objective(tiny_sae, lat, kind, reduce)(acts, mask)
        torch.testing.assert_close(all_k.scores[:, k], single.scores, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(all_k.token_acts[..., k], single.token_acts, atol=1e-5, rtol=1e-5)
    owner = torch.tensor([2, 0, 3])
    own = multi(acts, mask, owner=owner)
    torch.testing.assert_close(own.scores, all_k.scores[torch.arange(3), owner])
    # the evaluator (rows sorted by length, chunked) gives each row its own latent's score
    out = Evaluator(tiny_llama, multi, need_xe=True, batch_size=2)(ids, lengths, owner)
    for i, k in enumerate(owner.tolist()):
        ref = Evaluator(tiny_llama, multi.singles[k], need_xe=True)(
            ids[i : i + 1, : lengths[i]], lengths[i : i + 1]
        )
        assert abs(float(out.scores[i]) - float(ref.scores[0])) < 1e-4
        assert abs(float(out.xe[i]) - float(ref.xe[0])) < 1e-5
    del ev


def _one_hot_signals(model, objective, ids, xe_weight):
    """Reference: autograd through ``(one_hot @ W_E) * scale`` for one unpadded parent."""
    from featuredream.models.xe import sequence_xe

    W = model.get_input_embeddings().weight
    one_hot = torch.nn.functional.one_hot(ids, W.shape[0]).to(W.dtype).requires_grad_(True)
    mask = torch.ones(1, len(ids), dtype=torch.bool)
    acts, logits = run_sites(
        model, objective.sites, inputs_embeds=((one_hot @ W) * embed_scale(model))[None], logits=True
    )
    out = objective(acts, mask)
    xe = sequence_xe(logits, ids[None], mask)
    (-out.scores.sum() + xe_weight * xe.sum()).backward()
    return one_hot.grad, torch.log_softmax(logits[0].detach().float(), -1), float(out.scores), float(xe)


def test_batched_parent_signals_equal_one_hot_autograd(tiny_model, tiny_tokenizer, tiny_sae):
    """K padded parents in one pass == each parent alone through a one-hot input, by plain autograd."""
    multi = MultiLatentObjective(tiny_sae, [3, 9, 40])
    parents = [_ids(tiny_tokenizer, t) for t in PROMPTS]
    owner, weights = [1, 2, 0], [0.0, 1.0, 10.0]
    batched = batched_parent_signals(tiny_model, multi, parents, owner, weights)
    for p, k, w, b in zip(parents, owner, weights, batched):
        grad, logprobs, score, xe = _one_hot_signals(tiny_model, multi.singles[k], p, w)
        assert b.grad.shape == grad.shape == (len(p), grad.shape[1])
        torch.testing.assert_close(b.grad, grad, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(b.logprobs, logprobs, atol=1e-5, rtol=1e-5)
        assert abs(b.score - score) < 1e-4 and abs(b.xe - xe) < 1e-5


def test_owned_prefix_cache_equals_plain_path(tiny_model, tiny_tokenizer, tiny_sae):
    """Children of three parents, mutated at every position, scored with and without the parents' cache."""
    multi = MultiLatentObjective(tiny_sae, [3, 9, 40], reduce="max")
    parents = {k: _ids(tiny_tokenizer, t) for k, t in enumerate(PROMPTS)}
    g = torch.Generator().manual_seed(0)
    kids, owner = [], []
    for k, par in parents.items():
        for pos in range(len(par)):
            for _ in range(3):
                kid = par.clone()
                kid[pos] = int(torch.randint(1, 300, (1,), generator=g))
                kids.append(kid if pos % 3 else torch.cat([kid, torch.tensor([17])]))  # some longer
                owner.append(k)
        kids.append(par[:-1])  # a delete at the end: shares everything but is shorter
        owner.append(k)
    ids, mask = pad(kids, 0)
    lengths = mask.sum(1)
    owner = torch.tensor(owner)
    for need_xe in (False, True):
        plain = Evaluator(tiny_model, multi, need_xe=need_xe)(ids, lengths, owner)
        ev = Evaluator(tiny_model, multi, need_xe=need_xe, prefix_cache=True, batch_size=16)
        ev.bucket_overhead = 1  # many buckets: exercise the bucketed path on tiny batches
        cached = ev(ids, lengths, owner, parents)
        assert ev.n_cached_tokens > 0
        torch.testing.assert_close(cached.scores, plain.scores, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cached.valid, plain.valid)
        real = plain.valid
        torch.testing.assert_close(cached.token_acts[real], plain.token_acts[real], atol=1e-5, rtol=1e-5)
        if need_xe:
            torch.testing.assert_close(cached.xe, plain.xe, atol=1e-5, rtol=1e-5)


def _assert_same_run(m, s):
    assert m.best.text == s.best.text
    assert abs(m.best.activation - s.best.activation) <= 1e-4 and abs(m.best.xe - s.best.xe) <= 1e-5
    assert [b.text for b in m.buffer] == [b.text for b in s.buffer]
    assert [h.operator for h in m.history] == [h.operator for h in s.history]
    for hm, hs in zip(m.history, s.history):
        assert hm.candidates == hs.candidates
        assert abs(hm.best_loss - hs.best_loss) <= 1e-4 * max(1.0, abs(hs.best_loss))
    assert (m.n_evaluated, m.n_nonfinite, m.n_dropped_retokenization, m.n_capped_positions) == (
        s.n_evaluated,
        s.n_nonfinite,
        s.n_dropped_retokenization,
        s.n_capped_positions,
    )
    assert (m.start, m.stop_reason, m.feasible, m.feature, m.seed) == (
        s.start,
        s.stop_reason,
        s.feasible,
        s.feature,
        s.seed,
    )
    assert len(m.frontier) == len(s.frontier)


@pytest.mark.parametrize(
    "extra",
    [
        dict(start="prompt", init_prompt="The quick brown fox"),  # no XE: early exit only
        dict(start="auto", init_prompt="Once upon a time", xe_max=9.0),  # cascade, model samples
        dict(start="samples", xe_max=8.0, pareto=(0.1, 1.0), patience=2, restarts=1),  # frontier, restarts
        dict(start="prompt", init_prompt="The quick brown fox", xe_max=9.0, prefix_cache=False),
        dict(start="prompt", init_prompt="The quick brown fox", xe_max=9.0, bucket_overhead=1),
    ],
    ids=["score-only", "cascade", "pareto-restarts", "no-prefix-cache", "cached-buckets"],
)
def test_multi_run_equals_single_runs(tiny_model, tiny_tokenizer, tiny_sae, extra, monkeypatch):
    extra, cached = dict(extra), "bucket_overhead" in extra
    if cached:  # cheap passes, any batch size: both paths really split children into cached buckets
        from featuredream.evaluation.prefix_cache import BUCKET_OVERHEAD, PREFIX_MIN_CHILDREN

        monkeypatch.setitem(BUCKET_OVERHEAD, "cpu", extra.pop("bucket_overhead"))
        monkeypatch.setitem(PREFIX_MIN_CHILDREN, "cpu", 0)
    latents, seeds = [11, 2, 63], [3, 3, 7]
    cfg = DreamConfig(**{**FAST, **extra})
    multi = dream_many(tiny_model, tiny_tokenizer, MultiLatentObjective(tiny_sae, latents), cfg, seeds=seeds)
    assert [r.feature for r in multi] == latents
    for lat, seed, m in zip(latents, seeds, multi):
        single = dream(
            tiny_model,
            tiny_tokenizer,
            make_objective(tiny_sae, lat),
            DreamConfig(**{**FAST, **extra}, seed=seed),
        )
        _assert_same_run(m, single)
        assert m.environment.multi.features == 3
        assert m.environment.multi.cached_tokens > 0 or not cached
        assert m.verification.abs_error <= m.verification.tolerance


def test_dream_features_groups_and_errors(tiny_llama, tiny_tokenizer, tiny_sae):
    cfg = DreamConfig(**{**FAST, "iters": 2}, start="prompt", init_prompt="The quick brown fox")
    out = dream_features(tiny_llama, tiny_tokenizer, tiny_sae, [1, 2, 3], cfg, group_size=2)
    assert [r.feature for r in out] == [1, 2, 3]
    assert out[0].environment.multi.features == 2 and out[2].environment.multi.features == 1
    # a norm cap below every position's norm: every start scores -inf
    bad = MultiLatentObjective(tiny_sae, [1, 2], norm_guard=1e-6)
    with pytest.raises(ValueError, match="^feature 1: every start prompt scored non-finite"):
        dream_many(tiny_llama, tiny_tokenizer, bad, cfg)
    rec = dream_many(tiny_llama, tiny_tokenizer, bad, cfg, errors="record")
    assert all(isinstance(r, FeatureError) for r in rec) and [r.feature for r in rec] == [1, 2]


def test_dream_features_stops_after_an_interrupted_group(tiny_llama, tiny_tokenizer, tiny_sae, monkeypatch):
    """Ctrl-C in group 2's loop: group 2 ends with its best so far, group 3 never starts, and every
    finished group reached on_group as it finished."""
    import featuredream.engine.loop as multi

    real, calls, seen = multi.batched_parent_signals, [], []

    def interrupting(*a, **k):
        calls.append(1)
        if len(calls) == 3:  # group 1 ran its 2 iterations; this is group 2's first
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(multi, "batched_parent_signals", interrupting)
    cfg = DreamConfig(**{**FAST, "iters": 2}, start="prompt", init_prompt="The quick brown fox")
    out = dream_features(
        tiny_llama,
        tiny_tokenizer,
        tiny_sae,
        [1, 2, 3, 4, 5],
        cfg,
        group_size=2,
        on_group=lambda g, rs: seen.append((g, [r.interrupted for r in rs])),
    )
    assert seen == [([1, 2], [False, False]), ([3, 4], [True, True])]
    assert [r.feature for r in out] == [1, 2, 3, 4] and len(calls) == 3


def test_multi_bad_input(tiny_llama, tiny_tokenizer, tiny_sae):
    with pytest.raises(ValueError, match="no latents"):
        MultiLatentObjective(tiny_sae, [])
    with pytest.raises(ValueError, match=r"latents \[4\] given more than once"):
        MultiLatentObjective(tiny_sae, [4, 5, 4])
    with pytest.raises(ValueError, match="out of range.*0..127"):
        MultiLatentObjective(tiny_sae, [4, 128])
    with pytest.raises(ValueError, match="2 seeds for 3 latents"):
        dream_many(
            tiny_llama,
            tiny_tokenizer,
            MultiLatentObjective(tiny_sae, [1, 2, 3]),
            DreamConfig(**FAST),
            seeds=[0, 1],
        )
    with pytest.raises(ValueError, match="group_size=0"):
        dream_features(tiny_llama, tiny_tokenizer, tiny_sae, [1], DreamConfig(**FAST), group_size=0)


def test_prefix_cache_threshold_counts_the_whole_batch(tiny_llama, tiny_tokenizer, tiny_sae, monkeypatch):
    """PREFIX_MIN_CHILDREN is a batch size: 3 features x 32 children reach it together (the cache is used),
    one feature's 32 children alone do not (a single dream runs them plainly)."""
    import featuredream.evaluation.evaluate as evaluate
    from featuredream.evaluation.prefix_cache import BUCKET_OVERHEAD, PREFIX_MIN_CHILDREN

    monkeypatch.setitem(BUCKET_OVERHEAD, "cpu", 0)  # the planner always prefers the cache when offered
    monkeypatch.setitem(PREFIX_MIN_CHILDREN, "cpu", 64)
    calls = []
    real = evaluate.run_parents
    monkeypatch.setattr(
        evaluate, "run_parents", lambda m, s, p, **k: calls.append(len(p)) or real(m, s, p, **k)
    )
    cfg = DreamConfig(
        **{**FAST, "iters": 3, "n_children": 32}, start="prompt", init_prompt="The quick brown fox"
    )
    multi = dream_many(tiny_llama, tiny_tokenizer, MultiLatentObjective(tiny_sae, [1, 2, 3]), cfg)
    assert calls and max(calls) == 3 and multi[0].environment.multi.cached_tokens > 0
    calls.clear()
    dream(tiny_llama, tiny_tokenizer, make_objective(tiny_sae, 1), cfg)
    assert calls == []
