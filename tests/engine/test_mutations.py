import pytest
import torch

from featuredream.engine.mutations import delete, gcg_swap, sample_insert, sample_swap
from featuredream.evaluation.parent_grads import parent_signals
from featuredream.objectives.kinds import SAEEncoder

V = 50


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _n_diff(a, b):
    return int((a != b).sum())


def test_gcg_swap_edits_one_position_with_top_gradient_tokens():
    ids = torch.randint(0, V, (10,), generator=_gen(1))
    grad = torch.randn(10, V, generator=_gen(2))
    kids, pos = gcg_swap(ids, grad, 64, 5, _gen(), banned=torch.tensor([3]))
    assert kids.shape == (64, 10) and pos.shape == (64,)
    top = (-grad.masked_fill(torch.arange(V) == 3, torch.inf)).topk(5, dim=1).indices
    for k, p in zip(kids, pos):
        assert _n_diff(k, ids) <= 1 and (k[torch.arange(10) != p] == ids[torch.arange(10) != p]).all()
        assert k[p] in top[p] and k[p] != 3


def test_sample_swap_uses_distribution_of_previous_position():
    ids = torch.arange(8)
    logprobs = torch.full((8, V), -1e9)
    for p in range(8):
        logprobs[p, 40 + p] = 0.0  # row p predicts token p+1: only token 40+p has mass
    kids, pos = sample_swap(ids, logprobs, 32, 1, _gen())
    assert kids.shape == (32, 8)
    assert (pos >= 1).all()
    for k, p in zip(kids, pos):
        assert k[p] == 40 + (p - 1)  # sampled from the distribution predicted at p-1 (seed bug 3)
        assert _n_diff(k, ids) == 1


def test_sample_insert_shape_and_content():
    ids = torch.arange(6)
    logprobs = torch.full((6, V), -1e9)
    for p in range(6):
        logprobs[p, 30 + p] = 0.0
    kids, q = sample_insert(ids, logprobs, 20, 1, _gen())
    assert kids.shape == (20, 7)
    for k, p in zip(kids, q):
        assert k[p] == 30 + (p - 1)
        assert torch.equal(torch.cat([k[:p], k[p + 1 :]]), ids)


def test_delete_all_positions_when_n_large():
    ids = torch.arange(5) + 10
    kids, pos = delete(ids, 100, _gen())
    assert kids.shape == (5, 4)
    assert sorted(pos.tolist()) == list(range(5))
    for k, p in zip(kids, pos):
        assert torch.equal(k, torch.cat([ids[:p], ids[p + 1 :]]))


def test_operators_are_seeded():
    ids = torch.randint(0, V, (9,), generator=_gen(3))
    grad = torch.randn(9, V, generator=_gen(4))
    a, _ = gcg_swap(ids, grad, 16, 8, _gen(7))
    b, _ = gcg_swap(ids, grad, 16, 8, _gen(7))
    assert torch.equal(a, b)


@pytest.mark.parametrize("xe_weight", [0.0, 1.0])
def test_parent_signals_shapes(tiny_llama, tiny_sae, xe_weight):
    tiny_model = tiny_llama
    obj = SAEEncoder(tiny_sae, 5)
    ids = torch.randint(1, 300, (6,), generator=_gen(5))
    sig = parent_signals(tiny_model, obj, ids, xe_weight)
    assert sig.grad.shape == (6, tiny_model.config.vocab_size)
    assert sig.logprobs.shape == (6, tiny_model.config.vocab_size)
    torch.testing.assert_close(sig.logprobs.exp().sum(-1), torch.ones(6))
    assert sig.grad.abs().sum() > 0


def test_gemma_gradient_applies_embedding_scale(tiny_gemma, tmp_path):
    """With inputs_embeds, Gemma-2's sqrt(d_model) scale must be applied by hand (seed bug 8)."""
    from helpers.saes import write_sae_dir

    from featuredream.saes.loading import load_sae

    sae = load_sae(write_sae_dir(tmp_path / "g"), model=tiny_gemma)
    obj = SAEEncoder(sae, 2)
    ids = torch.randint(1, 300, (5,), generator=_gen(6))
    sig = parent_signals(tiny_gemma, obj, ids, 0.0)
    from featuredream.evaluation.evaluate import Evaluator

    ev = Evaluator(tiny_gemma, obj, need_xe=True)
    out = ev(ids[None], torch.tensor([5]))
    assert abs(sig.score - float(out.scores[0])) < 1e-4
    assert abs(sig.xe - float(out.xe[0])) < 1e-4


def test_gcg_fluency_prefers_the_plausible_token_among_good_gradients():
    """Token 3 has the best gradient but the model finds it implausible in place; token 4 is nearly as good
    by gradient and likely: plain GCG (top-1) picks 3, fluency-aware GCG picks 4."""
    from featuredream.engine.mutations import gcg_swap

    L, V = 4, 50
    ids = torch.tensor([1, 2, 5, 6])
    grad = torch.zeros(L, V)
    grad[:, 3], grad[:, 4] = -2.0, -1.9
    logprobs = torch.full((L, V), -5.0)
    logprobs[:, 3], logprobs[:, 4] = -20.0, -1.0
    g = torch.Generator().manual_seed(0)
    plain, pos = gcg_swap(ids, grad, 16, 1, g)
    assert (plain[torch.arange(16), pos] == 3).all()
    fluent, pos = gcg_swap(ids, grad, 16, 1, g, logprobs=logprobs, fluency=1.0)
    swapped = fluent[torch.arange(16), pos]
    assert (swapped[pos > 0] == 4).all() and (swapped[pos == 0] == 3).all()  # position 0 has no prior
    assert ((fluent != ids).sum(1) <= 1).all()


def test_nucleus_keeps_the_smallest_set_reaching_top_p():
    from featuredream.engine.mutations import nucleus

    lp = torch.tensor([[0.05, 0.5, 0.15, 0.3], [0.25, 0.25, 0.25, 0.25]]).log()
    kept = torch.isfinite(nucleus(lp, 0.7))
    assert kept.tolist() == [[False, True, False, True], [True, True, True, False]]
    assert torch.isfinite(nucleus(lp, 1e-6)).sum(1).tolist() == [1, 1]  # the most probable token stays
    assert torch.equal(nucleus(lp, 1.0), lp)


def test_sampled_operators_draw_only_from_the_nucleus():
    """With ``top_p``, every sampled swap and insert uses a token of the nucleus predicted at the position
    before it (here the two tokens holding 90%), even when fewer than ``k2`` tokens are left."""
    V, L = 50, 6
    probs = torch.full((L, V), 0.1 / (V - 2))
    probs[:, 7], probs[:, 11] = 0.6, 0.3
    lp = probs.log()
    ids = torch.arange(20, 20 + L)
    g = torch.Generator().manual_seed(0)
    kids, pos = sample_swap(ids, lp, 64, 8, g, top_p=0.9)
    assert set(kids[torch.arange(64), pos].tolist()) == {7, 11}
    kids, pos = sample_insert(ids, lp, 64, 8, g, top_p=0.9)
    assert set(kids[torch.arange(64), pos].tolist()) == {7, 11}
    kids, pos = sample_swap(ids, lp, 64, 8, g)  # the whole distribution: tail tokens too
    assert len(set(kids[torch.arange(64), pos].tolist())) > 2


def test_head_trims_drop_only_leading_tokens_and_keep_min_tokens():
    from featuredream.engine.mutations import head_trims

    ids = torch.arange(10, 20)
    trims = head_trims(ids, min_tokens=7)
    assert [t.tolist() for t in trims] == [list(range(11, 20)), list(range(12, 20)), list(range(13, 20))]
    assert all(t[-1] == ids[-1] for t in trims)  # the activating last token stays
    assert len(head_trims(ids, min_tokens=2)) == 4  # at most four
    assert head_trims(ids, min_tokens=10) == []
