"""What a dream reports under the readable goal: the most readable prompt reaching the floor (never one below
it when one above exists), the most activating prompt beside it, K distinct dreams, and the fallbacks."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from featuredream.engine.buffer import Buffer, Entry
from featuredream.engine.config import DreamConfig
from featuredream.engine.dream import dream
from featuredream.engine.fluency import XeLimit
from featuredream.engine.headline import pick_dreams
from featuredream.engine.readable import ReadableRule, overlap
from featuredream.engine.results import DreamResult
from featuredream.evaluation.evaluate import reference_evaluate
from featuredream.models.sites import Site
from featuredream.objectives.kinds import FunctionObjective, SAEEncoder
from featuredream.text.readability import Readability, readability, repeats

FAST = dict(
    iters=8, n_children=24, min_tokens=3, max_tokens=14, progress=False, n_start_samples=3, gcg_topk=32
)
START = "The quick brown fox"


def _loss(model, tok, obj, texts):
    """Each text's readability loss, re-scored by the reference path."""
    ref = reference_evaluate(model, tok, obj, texts)
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    lengths = torch.tensor([len(i) for i in ids])
    reps = torch.tensor([repeats(i) for i in ids])
    return ref.scores, readability(model, tok).loss(ref.xe, ref.peak, reps, lengths)


def test_the_headline_is_the_most_readable_prompt_reaching_the_floor(tiny_llama, tiny_tokenizer, tiny_sae):
    obj = SAEEncoder(tiny_sae, 11)
    floor = float(reference_evaluate(tiny_llama, tiny_tokenizer, obj, [START]).scores[0])
    cfg = DreamConfig(**FAST, seed=3, init_prompt=START, start="prompt", floor=floor)
    r = dream(tiny_llama, tiny_tokenizer, obj, cfg)
    assert r.headline == "readable" and r.floor == floor
    assert r.best.activation >= floor  # never below the floor while a candidate reaches it
    scores, loss = _loss(tiny_llama, tiny_tokenizer, obj, [p.text for p in r.buffer])
    above = scores >= floor
    assert above.any()
    assert float(loss[above].min()) == pytest.approx(
        float(_loss(tiny_llama, tiny_tokenizer, obj, [r.best.text])[1][0])
    )
    assert r.most_activating.activation >= r.best.activation  # the strongest prompt is reported too
    assert r.most_activating.activation == max(p.activation for p in r.buffer if p.xe == p.xe)
    assert r.dreams[0].prompt == r.best and r.dreams[0].above_floor
    back = DreamResult.from_json(r.to_json())
    assert (
        back.dreams == r.dreams and back.most_activating == r.most_activating and back.headline == "readable"
    )


def test_a_more_readable_candidate_below_the_floor_never_heads():
    """The choice itself (on crafted reference values): the most fluent candidate is just below the floor, two
    less fluent ones reach it; the headline and both dreams are those two, most readable first."""
    flat = Readability(*(torch.full((20,), v, dtype=torch.float64) for v in (5.0, 10.0, 0.0)))
    buf = Buffer([0.0], [4], XeLimit(9.0))
    buf.add_readable_lane(ReadableRule(10.0, flat, XeLimit(9.0)), 2, 0.5)
    run = SimpleNamespace(buffer=buf, cfg=DreamConfig(dreams=2, distinct_overlap=0.5))
    entries = [
        Entry(torch.tensor(ids), score, xe, "test", 1.0)
        for ids, score, xe in [([1, 2, 3], 9.99, 1.0), ([4, 5, 6], 12.0, 7.0), ([7, 8, 9], 10.0, 6.0)]
    ]
    picked, above, _ = pick_dreams(run, entries)
    assert [entries[i].score for i in picked] == [10.0, 12.0] and above == [True, True]


def test_k_dreams_are_distinct_and_each_re_scored(tiny_llama, tiny_tokenizer, tiny_sae):
    obj = SAEEncoder(tiny_sae, 11)
    cfg = DreamConfig(**FAST, seed=1, dreams=3, distinct_overlap=0.5)
    r = dream(tiny_llama, tiny_tokenizer, obj, cfg)
    assert len(r.dreams) == 3
    for i, a in enumerate(r.dreams):
        for b in r.dreams[i + 1 :]:
            assert overlap(a.prompt.ids, b.prompt.ids) <= 0.5 and a.prompt.text != b.prompt.text
        ref = reference_evaluate(tiny_llama, tiny_tokenizer, obj, [a.prompt.text])
        assert float(ref.scores[0]) == pytest.approx(a.prompt.activation, abs=1e-5)
        if a.above_floor:
            assert a.prompt.activation >= r.floor
    flags = [d.above_floor for d in r.dreams]
    assert flags == sorted(flags, reverse=True)  # dreams above the floor come first


def test_goal_max_reports_the_most_activating_prompt(tiny_llama, tiny_tokenizer, tiny_sae):
    obj = SAEEncoder(tiny_sae, 11)
    base = dict(**FAST, seed=3, init_prompt=START, start="prompt")
    r = dream(tiny_llama, tiny_tokenizer, obj, DreamConfig(**base, goal="max"))
    assert r.headline == "most activating" and r.floor is None and r.best == r.most_activating
    readable = dream(tiny_llama, tiny_tokenizer, obj, DreamConfig(**base, floor=-100.0))
    assert readable.headline == "readable" and readable.most_activating.activation >= readable.best.activation


def test_a_ratio_floor_without_a_dataset_maximum_falls_back_once(tiny_llama, tiny_tokenizer, caplog):
    site = Site("resid_post", 1)
    obj = FunctionObjective(lambda acts: acts[site][..., 0], [site], name="first unit")
    cfg = DreamConfig(**FAST, init_prompt=START, start="prompt")  # no corpus scan: no dataset maximum
    with caplog.at_level(logging.WARNING):
        r = dream(tiny_llama, tiny_tokenizer, obj, cfg)
    said = [m for m in caplog.messages if "no dataset maximum" in m]
    assert len(said) == 1 and "1x" in said[0]
    assert r.headline == "most activating" and r.floor is None and r.best == r.most_activating
