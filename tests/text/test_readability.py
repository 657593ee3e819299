"""The readability yardstick: natural prose's median XE, peak surprisal and repetition by length, and the
loss that ranks prompts by it (guard breakers after everything else)."""

from __future__ import annotations

import random

import pytest
import torch

from featuredream.text.readability import GUARD, Readability, prefix_repeats, repeats


def test_repeats_count_repeated_bigrams_and_immediate_repeats():
    assert repeats([1, 2, 3, 4]) == 0
    assert repeats([1, 1]) == 1  # an immediate repeat
    assert repeats([1, 1, 1]) == 3  # (1,1) twice -> one repeated bigram, plus two immediate repeats
    assert repeats([1, 2, 1, 2]) == 1  # the bigram (1, 2) again
    rng = random.Random(0)
    for _ in range(100):
        ids = [rng.randint(0, 3) for _ in range(rng.randint(1, 12))]
        assert prefix_repeats(ids) == [repeats(ids[:j]) for j in range(1, len(ids) + 1)]


def _reference():
    """Windows of 6 tokens; surprisal rows chosen by hand."""
    windows = torch.tensor([[1, 2, 3, 4, 5, 6], [1, 1, 2, 3, 4, 5], [7, 8, 7, 8, 9, 9], [3, 4, 5, 6, 7, 8]])
    surprisal = torch.tensor(
        [
            [2.0, 2.0, 2.0, 2.0, 2.0],
            [4.0, 1.0, 1.0, 1.0, 1.0],
            [3.0, 3.0, 9.0, 3.0, 3.0],
            [1.0, 1.0, 1.0, 1.0, 1.0],
        ]
    )
    return (
        Readability.from_reference(surprisal, windows, peak_pct=100.0, repeat_pct=100.0),
        surprisal,
        windows,
    )


def test_the_yardstick_is_computed_per_length():
    r, s, w = _reference()
    for n in range(2, 7):
        means = s[:, : n - 1].mean(1)
        assert float(r.xe_median[n]) == pytest.approx(torch.quantile(means.double(), 0.5).item())
        assert float(r.peak_limit[n]) == float(s[:, : n - 1].max())  # the 100th percentile: the largest
        assert float(r.repeat_limit[n]) == max(repeats(x[:n].tolist()) for x in w)
    assert float(r.xe_median[0]) == float(r.xe_median[1]) == float(r.xe_median[2])


def test_loss_ranks_guard_breakers_after_every_readable_prompt():
    r, _, _ = _reference()
    lengths = torch.tensor([5, 5, 5, 5])
    xe = torch.tensor([3.0, 1.0, 1.0, 1.0])
    peak = torch.tensor([3.0, 3.0, 20.0, 3.0])  # row 2: a token far beyond natural text's peaks
    reps = torch.tensor([0, 0, 0, 9])  # row 3: degenerate repetition
    loss = r.loss(xe, peak, reps, lengths)
    assert torch.argsort(loss).tolist()[:2] == [1, 0]
    assert (
        float(loss[2]) > GUARD - 10
        and float(loss[3]) > GUARD - 10
        and float(loss[2:].min()) > float(loss[:2].max())
    )
    torch.testing.assert_close(loss[:2], (xe[:2] - r.xe_median[5]).double())
    off = r.loss(xe, peak, reps, lengths, guards=(False, False))
    assert torch.argsort(off).tolist()[-1] == 0  # without guards only the XE counts
    assert r.broken(torch.tensor([float("nan")]), torch.tensor([0]), torch.tensor([5]))[0].tolist() == [False]


def test_the_shipped_reference_is_the_default_models_surprisal(default_model):
    """Shipped data is code: the default model's surprisal of a slice of the prose windows, recomputed,
    equals the shipped rows (float16 storage), and the loader takes the shipped file for this model."""
    from featuredream.text.prose import prose_windows
    from featuredream.text.readability import prose_surprisal, shipped_path, token_surprisal

    model, tok = default_model
    assert shipped_path().exists()
    table, windows = prose_surprisal(model, tok)
    assert torch.equal(windows, prose_windows(tok)) and table.shape == (640, 63)
    rows = torch.arange(0, 640, 80)  # 8 windows spread over news and documentation
    fresh = token_surprisal(model, windows[rows])
    torch.testing.assert_close(table[rows], fresh.half().float(), rtol=0, atol=2e-2)
