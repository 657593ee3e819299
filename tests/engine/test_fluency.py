import torch
import torch.nn.functional as F

from featuredream.models.xe import sequence_xe


def test_masked_xe_equals_unpadded_xe(tiny_llama):
    torch.manual_seed(0)
    seqs = [torch.randint(1, 300, (n,)) for n in (3, 7, 5)]
    ids = torch.zeros(3, 7, dtype=torch.long)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = True
    logits = tiny_llama(ids, attention_mask=mask.long()).logits
    batched = sequence_xe(logits, ids, mask)
    for i, s in enumerate(seqs):
        lg = tiny_llama(s[None]).logits[0]
        ref = F.cross_entropy(lg[:-1], s[1:])
        torch.testing.assert_close(batched[i], ref, atol=1e-5, rtol=1e-5)


def test_left_padding_same_as_right(tiny_llama):
    s = torch.randint(1, 300, (5,))
    right = torch.cat([s, torch.zeros(2, dtype=torch.long)])[None]
    left = torch.cat([torch.zeros(2, dtype=torch.long), s])[None]
    rm = (torch.arange(7) < 5)[None]
    lm = (torch.arange(7) >= 2)[None]
    # Logits at real positions are what matter; feed the same per-position logits for both layouts
    lg = tiny_llama(s[None]).logits
    pad = torch.zeros(1, 2, lg.shape[-1])
    xr = sequence_xe(torch.cat([lg, pad], 1), right, rm)
    xl = sequence_xe(torch.cat([pad, lg], 1), left, lm)
    torch.testing.assert_close(xr, xl)


def test_one_token_sequence_is_zero():
    logits = torch.randn(1, 1, 10)
    assert sequence_xe(logits, torch.tensor([[3]]), torch.ones(1, 1, dtype=torch.bool)).item() == 0.0


# ------------------------------------------------------------------------------ length-fair XE ceilings
import pytest  # noqa: E402

from featuredream.engine.buffer import Buffer, Entry  # noqa: E402
from featuredream.engine.fluency import XeLimit, parse_xe_max, resolve_xe_limit  # noqa: E402
from featuredream.saes.loading import FeatureStats  # noqa: E402


@pytest.mark.parametrize(
    "given,want",
    [(None, None), ("none", None), ("6.5", 6.5), (3, 3.0), ("p90", "p90"), ("P99", "p99"), ("p1", "p1")],
)
def test_parse_xe_max_accepts(given, want):
    assert parse_xe_max(given) == want


@pytest.mark.parametrize("given", ["p101", "p0", "p100", "abc", "-1", 0, float("nan"), True, "p9x"])
def test_parse_xe_max_names_the_bad_value(given):
    with pytest.raises(
        ValueError, match=r"xe_max=.* is invalid: valid is a number > 0, pNN with NN in 1..99"
    ):
        parse_xe_max(given)


def _table_stats() -> FeatureStats:
    """An XE table where natural text's XE falls with length: percentile q at length L = 10 - L/8 + q/100."""
    lengths = torch.arange(2, 33)
    q = torch.arange(101.0)
    return FeatureStats(
        {"xe_lengths": lengths.int(), "xe_quantiles": (10 - lengths[:, None] / 8 + q[None] / 100).float()}, {}
    )


class _Obj:
    def __init__(self, stats):
        self.sae = type("S", (), {"stats": stats, "name": "t"})()


def test_pnn_limit_is_read_at_each_length():
    lim = resolve_xe_limit("p90", _Obj(_table_stats()), max_tokens=32)
    assert lim.at(8) == pytest.approx(10 - 1 + 0.9) and lim.at(32) == pytest.approx(10 - 4 + 0.9)
    assert lim.of([8, 32]).tolist() == pytest.approx([9.9, 6.9])
    assert resolve_xe_limit(5.0, _Obj(None), 32).at(30) == 5.0
    assert resolve_xe_limit(None, _Obj(None), 32) is None
    with pytest.raises(ValueError, match="xe_max='p90' needs a natural-text XE table"):
        resolve_xe_limit("p90", _Obj(FeatureStats({}, {})), 32)
    # without an SAE table the model's own table is read (and only then)
    asked = []
    model_lim = resolve_xe_limit("p90", _Obj(None), 32, lambda: asked.append(1) or _table_stats().tensors)
    assert model_lim.at(8) == pytest.approx(9.9) and asked == [1]
    resolve_xe_limit("p90", _Obj(_table_stats()), 32, lambda: asked.append(2) or {})
    assert asked == [1]
    rec = lim.describe(8, 10)
    assert rec.spec == "p90" and list(rec.by_length) == [8, 9, 10]


def test_buffer_feasibility_is_per_length():
    """The same XE is within the ceiling for a short prompt and above it for a long one."""
    lim = XeLimit("p90", torch.tensor([10.0 - n / 8 + 0.9 for n in range(33)], dtype=torch.float64))
    short = Entry(torch.arange(8), score=1.0, xe=9.0, source="x")  # ceiling 9.9
    long_ = Entry(torch.arange(32), score=5.0, xe=9.0, source="x")  # ceiling 6.9
    buf = Buffer([0.0], [2], lim)
    buf.merge([long_, short])
    assert buf.feasible(short) and not buf.feasible(long_)
    assert buf.entries[0] is short  # feasible first, although the long prompt scores higher
    assert buf.loss(long_) > 1e5
    fixed = Buffer([0.0], [2], XeLimit(9.5))
    fixed.merge([long_, short])
    assert fixed.entries[0] is long_  # one number: both feasible, the higher score wins
