"""GCG on a toy whose best swap is known: an objective linear in the token embeddings (per-position
directions read at ``resid_pre`` of layer 0, averaged), so the first-order GCG score is exact. Every single
swap of the parent is scored by brute force with a plain forward pass, and the proposals must be the truly
best swaps; with a large XE weight the proposals must lower the true XE."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from featuredream import FunctionObjective, Site
from featuredream.engine.mutations import gcg_swap
from featuredream.evaluation.parent_grads import parent_signals

L = 8
EMB = Site("resid_pre", 0)


def _linear_objective(d_model: int, seed: int = 0):
    D = torch.randn(L, d_model, generator=torch.Generator().manual_seed(seed))  # one direction per position
    obj = FunctionObjective(lambda acts: (acts[EMB].float() * D[: acts[EMB].shape[1]]).sum(-1), [EMB], "mean")
    return obj, D


def _parent(tok):
    ids = tok("The quick brown fox jumps over the lazy dog", add_special_tokens=False)["input_ids"][:L]
    assert len(ids) == L
    return torch.tensor(ids)


@torch.no_grad()
def _all_single_swaps(model, ids, D):
    """Score and mean XE of the parent and of every single swap ``[L, V]``, by plain forward passes."""
    V = model.config.vocab_size
    swaps = ids.repeat(L * V, 1)
    swaps[torch.arange(L * V), torch.arange(L).repeat_interleave(V)] = torch.arange(V).repeat(L)
    seqs = torch.cat([ids[None], swaps])
    scores, xes = [], []
    for batch in seqs.split(512):
        out = model(input_ids=batch, output_hidden_states=True, use_cache=False)
        scores.append((out.hidden_states[0].float() * D).sum(-1).mean(-1))  # embeddings (Gemma: scaled)
        lg = out.logits[:, :-1].float()
        xe = F.cross_entropy(lg.reshape(-1, V), batch[:, 1:].reshape(-1), reduction="none")
        xes.append(xe.view(len(batch), L - 1).mean(1))
    scores, xes = torch.cat(scores), torch.cat(xes)
    return float(scores[0]), scores[1:].view(L, V), float(xes[0]), xes[1:].view(L, V)


@pytest.mark.parametrize("kind", ["tiny_llama", "tiny_gemma", "tiny_gemma3"])
def test_gcg_proposes_the_truly_best_swaps_on_a_linear_objective(kind, request, tiny_tokenizer, one_thread):
    """Llama, Gemma-2 and Gemma-3 (both Gemmas scale the embeddings inside the embedding module)."""
    model, ids = request.getfixturevalue(kind), _parent(tiny_tokenizer)
    obj, D = _linear_objective(model.config.hidden_size)
    score0, true, _, _ = _all_single_swaps(model, ids, D)
    sig = parent_signals(model, obj, ids, 0.0)
    assert sig.score == pytest.approx(score0, abs=1e-5)
    # linear objective: the first-order gain of swapping position p to token v is exact (sign and scale)
    predicted = -(sig.grad - sig.grad.gather(1, ids[:, None]))  # -d loss = d score
    torch.testing.assert_close(predicted, true - score0, atol=1e-5, rtol=1e-4)
    best = true.argmax(1)  # brute force: the best token at each position
    kids, pos = gcg_swap(ids, sig.grad, 64, 1, torch.Generator().manual_seed(1))
    assert set(pos.tolist()) == set(range(L))
    for k, p in zip(kids, pos):
        assert int(k[p]) == int(best[p]) and torch.equal(k[torch.arange(L) != p], ids[torch.arange(L) != p])
    top5 = true.topk(5, dim=1).indices
    kids, pos = gcg_swap(ids, sig.grad, 256, 5, torch.Generator().manual_seed(2))
    got = {(int(p), int(k[p])) for k, p in zip(kids, pos)}
    want = {(p, int(v)) for p in range(L) for v in top5[p]}
    assert got == want  # exactly the 5 best swaps of each position, all of them proposed
    # none lowers the true score (a top-5 token may be the parent's own), and the best of all L * V swaps
    gains = true[pos, kids[torch.arange(len(pos)), pos]] - score0
    assert float(gains.min()) > -1e-6 and float(gains.max()) == pytest.approx(float(true.max()) - score0)


def test_gcg_with_a_large_xe_weight_proposes_swaps_that_lower_the_true_xe(
    tiny_llama, tiny_tokenizer, one_thread
):
    model, ids = tiny_llama, _parent(tiny_tokenizer)
    obj, D = _linear_objective(model.config.hidden_size)
    _, _, xe0, true_xe = _all_single_swaps(model, ids, D)

    def proposals_xe(weight):
        sig = parent_signals(model, obj, ids, weight)
        assert sig.xe == pytest.approx(xe0, abs=1e-4)
        kids, pos = gcg_swap(ids, sig.grad, 256, 8, torch.Generator().manual_seed(3))
        return true_xe[pos, kids[torch.arange(256), pos]]

    fluent, plain = proposals_xe(1e3), proposals_xe(0.0)
    assert float((fluent < xe0).float().mean()) >= 0.9  # measured 0.98
    assert float((plain < xe0).float().mean()) <= 0.7  # without the term: a coin flip (measured 0.48)
    assert float(fluent.mean()) < float(plain.mean()) and float(fluent.mean()) < float(true_xe.mean())
