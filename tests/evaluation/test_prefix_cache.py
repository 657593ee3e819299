"""Prefix key/value cache: children scored from the parent's cache equal the plain fast path.

Tolerance: 1e-4 absolute and relative, float32 (observed differences are ~1e-6: the prefix positions
come from a batch-of-one pass instead of the children's batch).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers.children import mixed_children

from featuredream.evaluation.evaluate import Evaluator
from featuredream.evaluation.prefix_cache import cache_argument, plan_buckets, shared_prefixes
from featuredream.models.padding import pad
from featuredream.models.sites import Site
from featuredream.objectives.kinds import DirectionObjective, SAEEncoder

TOL = dict(atol=1e-4, rtol=1e-4)


def _compare(model, objective, parent, seqs, need_xe: bool, batch_size: int = 64):
    ids, mask = pad(seqs, 0)
    lengths = mask.sum(1)
    plain = Evaluator(model, objective, need_xe=need_xe, batch_size=batch_size)(ids, lengths)
    ev = Evaluator(model, objective, need_xe=need_xe, batch_size=batch_size, prefix_cache=True)
    ev.bucket_overhead = 0  # as many buckets as distinct prefixes: exercises every cut
    cached = ev(ids, lengths, parent=parent)
    assert ev.n_cached_tokens > 0
    torch.testing.assert_close(cached.scores, plain.scores, **TOL)
    if need_xe:
        torch.testing.assert_close(cached.xe, plain.xe, **TOL)
    else:
        assert torch.isnan(cached.xe).all()
    assert torch.equal(cached.valid, plain.valid)
    torch.testing.assert_close(cached.token_acts, plain.token_acts, **TOL)
    return ev


@pytest.mark.parametrize("need_xe", [True, False])
@pytest.mark.parametrize("reduce", ["last", "max", "mean"])
def test_prefix_cache_equals_plain_path(tiny_model, tiny_sae, need_xe, reduce):
    parent = torch.randint(1, 300, (11,), generator=torch.Generator().manual_seed(1))
    obj = SAEEncoder(tiny_sae, 5, reduce=reduce)
    _compare(tiny_model, obj, parent, mixed_children(parent, 300), need_xe)


def test_prefix_cache_passes_the_cache_without_a_deprecation_warning(tiny_llama, tiny_sae):
    """transformers 5.2x renamed ``past_key_values`` to ``cache`` and warns on the old name (a warning the
    CLI printed on every dream); the cache goes by the name the model's forward takes."""
    parent = torch.randint(1, 300, (9,), generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _compare(tiny_llama, SAEEncoder(tiny_sae, 1), parent, mixed_children(parent, 300), need_xe=True)
    assert not [w for w in caught if "past_key_values" in str(w.message)]

    class OlderModel(torch.nn.Module):  # transformers before the rename (>= 4.51 is supported)
        def forward(self, input_ids=None, past_key_values=None, use_cache=None):
            raise NotImplementedError

    assert cache_argument(OlderModel()) == "past_key_values"


@pytest.mark.parametrize(
    "site", [Site("resid_pre", 1), Site("attn_q_rot", 1, head=2), Site("attn_z", 0), Site("mlp_out", 2)]
)
def test_prefix_cache_head_and_early_sites(tiny_model, site):
    width = 16 if site.head is not None else 64
    obj = DirectionObjective(site, torch.randn(width, generator=torch.Generator().manual_seed(2)), "max")
    parent = torch.randint(1, 300, (9,), generator=torch.Generator().manual_seed(3))
    for need_xe in (False, True):
        _compare(tiny_model, obj, parent, mixed_children(parent, 300, seed=4), need_xe)


def test_prefix_cache_gemma2_sliding_window_shorter_than_prompt(tiny_sae):
    """Gemma-2 with a 4-token sliding window: cached keys beyond the window must be masked exactly."""
    from transformers import AutoModelForCausalLM, Gemma2Config

    torch.manual_seed(0)
    cfg = Gemma2Config(
        vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=128, query_pre_attn_scalar=16,
        sliding_window=4, pad_token_id=0, eos_token_id=0, bos_token_id=0,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval().requires_grad_(False)
    parent = torch.randint(1, 300, (12,), generator=torch.Generator().manual_seed(5))
    obj = DirectionObjective(Site("resid_post", 2), torch.randn(64), "mean")
    _compare(model, obj, parent, mixed_children(parent, 300, seed=6), need_xe=True)


@pytest.mark.parametrize("site", [Site("resid_pre", 0), Site("resid_post", 1)])
def test_prefix_cache_absolute_positions(site):
    """GPT-2 adds learned position embeddings: a child's tail must run at positions p.., also when the
    objective reads the first layer's input and the parent's pass stopped before any layer ran."""
    from transformers import AutoModelForCausalLM, GPT2Config

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=300, n_embd=64, n_layer=2, n_head=4, n_positions=64)
    model = AutoModelForCausalLM.from_config(cfg).eval().requires_grad_(False)
    parent = torch.randint(1, 300, (10,), generator=torch.Generator().manual_seed(13))
    obj = DirectionObjective(site, torch.randn(64, generator=torch.Generator().manual_seed(14)), "mean")
    for need_xe in (False, True):
        _compare(model, obj, parent, mixed_children(parent, 300, seed=15), need_xe)


def test_prefix_cache_with_default_bucketing_and_small_batches(tiny_llama, tiny_sae):
    parent = torch.randint(1, 300, (14,), generator=torch.Generator().manual_seed(7))
    obj = SAEEncoder(tiny_sae, 3, reduce="last")
    seqs = mixed_children(parent, 300, seed=8)
    ids, mask = pad(seqs, 0)
    lengths = mask.sum(1)
    plain = Evaluator(tiny_llama, obj)(ids, lengths)
    ev = Evaluator(tiny_llama, obj, batch_size=4, prefix_cache=True)
    out = ev(ids, lengths, parent=parent)
    torch.testing.assert_close(out.scores, plain.scores, **TOL)
    torch.testing.assert_close(out.xe, plain.xe, **TOL)
    assert ev.n_evaluated == len(seqs)


def test_shared_prefix_is_capped_to_leave_one_token():
    parent = torch.tensor([5, 6, 7, 8])
    ids, mask = pad(
        [
            torch.tensor([5, 6, 9, 8]),  # swap at 2
            torch.tensor([5, 6, 7, 1, 8]),  # insert at 3
            torch.tensor([5, 6, 7]),  # delete the last token: all shared, one left to run
            torch.tensor([1, 6, 7, 8]),  # swap at 0: nothing shared
            torch.tensor([5, 6, 7, 8]),  # the parent itself
        ],
        0,
    )
    lengths = mask.sum(1)
    one = shared_prefixes(parent[None], torch.tensor([4]), torch.zeros(5, dtype=torch.long), ids, lengths)
    assert one.tolist() == [2, 3, 2, 0, 3]


def test_shared_prefixes_use_each_childs_own_parent():
    """Two parents of different lengths (right-padded): each child is compared with its own parent only;
    a child without a parent (row -1) shares nothing; padding of a short parent never matches."""
    parents, pmask = pad([torch.tensor([5, 6, 7, 8]), torch.tensor([9, 9])], 0)
    plens = pmask.sum(1)
    ids, mask = pad(
        [
            torch.tensor([5, 6, 1, 8]),  # parent 0, differs at 2
            torch.tensor([9, 9, 0, 4]),  # parent 1 ([9, 9] + padding 0): shares 2, not the padding
            torch.tensor([5, 6, 7, 8]),  # parent 1: differs at 0
            torch.tensor([5, 6, 7, 8]),  # no parent
        ],
        0,
    )
    rows = torch.tensor([0, 1, 1, -1])
    assert shared_prefixes(parents, plens, rows, ids, mask.sum(1)).tolist() == [2, 2, 0, 0]


def test_plan_buckets_partitions_children():
    prefix = torch.tensor([0, 3, 3, 5, 1, 7, 7, 2])
    lengths = torch.tensor([8, 8, 9, 8, 7, 8, 8, 9])
    for overhead in (0, 4, 1e9):
        plan = plan_buckets(prefix, lengths, overhead)
        members = torch.cat([idx for _, idx in plan]).sort().values
        assert members.tolist() == list(range(8))  # each child exactly once
        for p, idx in plan:
            assert (prefix[idx] >= p).all()  # a bucket never starts after a member's shared prefix
    assert len(plan_buckets(prefix, lengths, 0)) == len(set(prefix.tolist()))
    assert len(plan_buckets(prefix, lengths, 1e9)) == 1
    # when the parent pass costs more than it saves, everything runs without the cache
    plan = plan_buckets(torch.tensor([1, 1]), torch.tensor([8, 8]), 4, parent_len=8)
    assert [(p, idx.tolist()) for p, idx in plan] == [(0, [0, 1])]
    plan = plan_buckets(torch.tensor([10, 10]), torch.tensor([12, 12]), 4, parent_len=12)
    assert [(p, idx.tolist()) for p, idx in plan] == [(10, [0, 1])]


def test_prefix_cache_halves_batch_on_oom(tiny_llama, tiny_sae, monkeypatch):
    import featuredream.evaluation.evaluate as evaluate

    parent = torch.randint(1, 300, (10,), generator=torch.Generator().manual_seed(9))
    obj = SAEEncoder(tiny_sae, 2, reduce="max")
    seqs = mixed_children(parent, 300, seed=10)
    ids, mask = pad(seqs, 0)
    lengths = mask.sum(1)
    real = evaluate.run_tails

    def flaky(model, sites, par, rows, p, c_ids, *a, **k):
        if len(c_ids) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, sites, par, rows, p, c_ids, *a, **k)

    monkeypatch.setattr(evaluate, "run_tails", flaky)
    ev = Evaluator(tiny_llama, obj, batch_size=16, prefix_cache=True)
    ev.bucket_overhead = 0
    out = ev(ids, lengths, parent=parent)
    assert ev.batch_size <= 2 and ev.n_oom >= 1
    plain = Evaluator(tiny_llama, obj)(ids, lengths)
    torch.testing.assert_close(out.scores, plain.scores, **TOL)
    torch.testing.assert_close(out.xe, plain.xe, **TOL)


def test_unsupported_site_falls_back_to_plain_path(tiny_llama, tiny_sae, monkeypatch):
    import featuredream.evaluation.prefix_cache as pc

    monkeypatch.setattr(pc, "PER_POSITION_KINDS", ())
    parent = torch.randint(1, 300, (8,), generator=torch.Generator().manual_seed(11))
    ids, mask = pad(mixed_children(parent, 300, seed=12), 0)
    lengths = mask.sum(1)
    ev = Evaluator(tiny_llama, SAEEncoder(tiny_sae, 1), prefix_cache=True)
    ev(ids, lengths, parent=parent)
    assert ev.n_cached_tokens == 0


@pytest.mark.parametrize("xe_max", [None, 8.0])
def test_dream_with_prefix_cache_follows_the_same_path(
    tiny_llama, tiny_tokenizer, tiny_sae, xe_max, monkeypatch
):
    """Early exit (no XE) and the cascade (xe_max) compose with the cache: the same search, step by step."""
    import featuredream.engine.loop as loop
    import featuredream.evaluation.evaluate as evaluate
    from featuredream import DreamConfig, dream

    parents = []
    real = evaluate.run_parents
    monkeypatch.setattr(evaluate, "run_parents", lambda m, s, p, **k: parents.append(p) or real(m, s, p, **k))
    monkeypatch.setattr(evaluate, "BUCKET_OVERHEAD", {"cpu": 0, "cuda": 0})  # always use the cache
    monkeypatch.setattr(loop, "PREFIX_MIN_CHILDREN", {"cpu": 0, "cuda": 0})  # even for small batches

    obj = SAEEncoder(tiny_sae, 11)
    common = dict(
        iters=6, n_children=24, min_tokens=3, max_tokens=14, progress=False, gcg_topk=32, seed=2,
        init_prompt="The quick brown fox", start="prompt", xe_max=xe_max,
    )  # fmt: skip
    on = dream(tiny_llama, tiny_tokenizer, obj, DreamConfig(**common, prefix_cache=True))
    assert len(parents) >= len(on.history)  # the cache was used every iteration (twice with the cascade)
    n = len(parents)
    off = dream(tiny_llama, tiny_tokenizer, obj, DreamConfig(**common, prefix_cache=False))
    assert len(parents) == n
    assert on.best.text == off.best.text
    for a, b in zip(on.history, off.history):
        assert a.best_activation == pytest.approx(b.best_activation, abs=1e-4)
        assert a.candidates == b.candidates
    assert on.n_evaluated == off.n_evaluated
