"""The retokenization round trip with a tokenizer that changes text: the fixture's byte-level BPE with the
(old GPT-2 style) clean-up of spaces before punctuation. Its round trip is lossy and not idempotent:
``"a  ."`` decodes to ``"a ."``, whose tokens decode to ``"a."``. Children whose re-encoded text is not a
fixed point must be dropped and counted, and every reported prompt must re-encode to its ids."""

from __future__ import annotations

import pytest
import torch

from featuredream import DirectionObjective, DreamConfig, Site, dream
from featuredream.engine.children import Canonicalizer

# a fluent start with runs of spaces: deleting or swapping one token next to them leaves "  ." or "  ,"
START = "To be   x, or not   y. That is   z, the   w."


@pytest.fixture(scope="module")
def lossy_tokenizer(tiny_tokenizer):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=tiny_tokenizer.backend_tokenizer,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=True,
        clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output=True,  # transformers >= 5
    )
    enc = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert tok.decode(enc("a  . b")) == "a . b" and tok.decode(enc("a . b")) == "a. b"  # lossy, twice
    assert tok.decode(enc(START)) == START  # the start itself is a fixed point
    return tok


def _enc(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_canonicalizer_drops_children_that_are_not_a_fixed_point(lossy_tokenizer):
    tok = lossy_tokenizer
    (x,) = _enc(tok, "x")
    parent = _enc(tok, "To   x. be")
    twice = [i for i in parent if i != x]  # "To   . be" -> "To  . be" -> "To . be": not a fixed point
    once = [i for i in _enc(tok, "To x. be") if i != x]  # "To . be" -> "To. be", its own tokenization
    canon = Canonicalizer(tok, 2, 16)
    out = canon([torch.tensor(c) for c in (parent, twice, once)])
    assert out[0] is not None and out[0].tolist() == parent
    assert out[1] is None
    assert out[2] is not None and out[2].tolist() == _enc(tok, "To. be") != once
    assert canon.dropped == 1
    assert Canonicalizer(tok, 2, 3)([torch.tensor(parent)]) == [None]  # outside the length bounds


def test_dream_drops_and_counts_unstable_children_and_reports_only_fixed_points(
    tiny_llama, tiny_tokenizer, lossy_tokenizer, one_thread
):
    E = tiny_llama.get_input_embeddings().weight.detach()
    space, dot = (_enc(tiny_tokenizer, t)[0] for t in (" ", "."))
    # linear in the embeddings: rewards lone spaces and periods, i.e. the patterns the clean-up changes
    direction = E[space] / E[space].norm() + E[dot] / E[dot].norm()
    obj = DirectionObjective(Site("resid_pre", 0), direction, reduce="mean")
    cfg = DreamConfig(
        iters=8,
        n_children=32,
        min_tokens=2,
        max_tokens=40,  # lengths stay far inside the bounds: only the round trip can drop a child
        gcg_topk=32,
        progress=False,
        init_prompt=START,
        start="prompt",
        seed=0,
    )
    r = dream(tiny_llama, lossy_tokenizer, obj, cfg)
    assert r.n_dropped_retokenization > 0
    for p in [r.best, *r.buffer]:
        assert _enc(lossy_tokenizer, p.text) == p.ids, p.text
        assert lossy_tokenizer.decode(p.ids) == p.text, p.text
    assert all(2 < h.best_tokens < 40 for h in r.history)
    lossless = dream(tiny_llama, tiny_tokenizer, obj, cfg)  # same search, a lossless round trip
    assert lossless.n_dropped_retokenization == 0
