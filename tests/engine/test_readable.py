"""The readable lane: prompts reaching the floor under the ceiling, most readable first, pairwise distinct;
everything below the floor stays out; any prompt reaching the floor may enter (the cascade's bound)."""

from __future__ import annotations

import math

import pytest
import torch

from featuredream.engine.buffer import Buffer, Entry
from featuredream.engine.fluency import XeLimit
from featuredream.engine.readable import ReadableRule, distinct_from, overlap
from featuredream.text.readability import Readability

FLAT = Readability(
    torch.full((20,), 5.0, dtype=torch.float64),
    torch.full((20,), 10.0, dtype=torch.float64),
    torch.zeros(20, dtype=torch.float64),
)


def _e(ids, score, xe, peak=1.0):
    return Entry(torch.tensor(ids), score, xe, "test", peak)


def test_overlap_is_the_shorter_prompts_shared_share():
    assert overlap([1, 2, 3, 4], [5, 6]) == 0.0
    assert overlap([1, 2, 3, 4], [1, 2]) == 1.0
    assert overlap([1, 2, 3, 4], [3, 4, 5, 6]) == 0.5
    assert distinct_from([1, 2, 3, 4], [[3, 4, 5, 6]], 0.5) and not distinct_from([1, 2, 3], [[1, 2, 9]], 0.5)


def test_the_lane_keeps_the_most_readable_distinct_prompts_above_the_floor():
    buf = Buffer([0.0], [1], XeLimit(9.0))
    lane = buf.add_readable_lane(ReadableRule(10.0, FLAT, XeLimit(9.0)), 2, 0.5)
    strong = _e([1, 2, 3, 4], 50.0, 8.5)  # most activating: lane 0 keeps it
    fluent = _e([5, 6, 7, 8], 11.0, 4.0)  # the most readable above the floor
    twin = _e([5, 6, 7, 9], 12.0, 4.5)  # as readable, but shares 3/4 of its tokens with `fluent`
    other = _e([10, 11, 12, 13], 10.0, 6.0)  # reaches the floor exactly (inclusive), distinct
    below = _e([14, 15, 16, 17], 9.9, 1.0)  # most fluent of all, below the floor: never in the lane
    over = _e([18, 19, 20, 21], 40.0, 9.5)  # above the ceiling
    buf.merge([strong, fluent, twin, other, below, over])
    assert [e.score for e in buf.lane_members(lane)] == [11.0, 10.0]
    assert {e.score for e in buf.entries} == {50.0, 11.0, 10.0}
    assert math.isinf(float(buf.lane_losses([below], lane)[0])) and math.isinf(
        float(buf.lane_losses([over], lane)[0])
    )
    assert buf.readable_lane == lane and buf.entry_bound() < 10.0 <= math.nextafter(buf.entry_bound(), 11.0)


def test_a_guard_breaker_ranks_after_a_less_fluent_prompt_that_keeps_the_guards():
    buf = Buffer([0.0], [1], None)
    lane = buf.add_readable_lane(ReadableRule(0.0, FLAT, None), 2, 1.0)
    spiky = _e([1, 2, 3, 4], 5.0, 3.0, peak=25.0)  # one token far more surprising than natural text
    loop = _e([5, 6, 5, 6], 5.0, 3.0)  # a repeated bigram (natural text here: none)
    plain = _e([7, 8, 9, 10], 5.0, 6.0)
    buf.merge([spiky, loop, plain])
    assert buf.lane_members(lane)[0] is plain
    off = Buffer([0.0], [1], None)
    lane = off.add_readable_lane(ReadableRule(0.0, FLAT, None, (False, False)), 1, 1.0)
    off.merge([spiky, plain])
    assert off.lane_members(lane)[0] is spiky  # guards off: only XE counts


def test_the_example_reference_is_the_best_examples_xe_at_each_length(tiny_llama):
    """readable_reference='example': a prompt of L tokens is compared with the dataset's best example cut to
    its last L tokens, scored alone by the dreaming model."""
    from featuredream.engine.readable import example_reference
    from featuredream.models.xe import sequence_xe

    context = [5, 17, 33, 8, 91, 40, 12, 7, 66, 3]
    ref = example_reference(tiny_llama, FLAT, context, max_tokens=14)
    for n in (2, 5, 10):
        ids = torch.tensor([context[-n:]])
        with torch.no_grad():
            want = float(
                sequence_xe(tiny_llama(input_ids=ids).logits, ids, torch.ones_like(ids, dtype=torch.bool))[0]
            )
        assert float(ref.xe_median[n]) == pytest.approx(want, abs=1e-5)
    assert float(ref.xe_median[14]) == float(ref.xe_median[10])  # past the context: its whole XE
    assert torch.equal(ref.peak_limit, FLAT.peak_limit)  # the guards keep natural prose's yardstick
