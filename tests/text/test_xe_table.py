"""Natural text's XE by length: each quantile is the XE of the truncated windows, read at each length."""

from __future__ import annotations

import pytest
import torch

from featuredream.models.xe import sequence_xe
from featuredream.saes.loading import FeatureStats
from featuredream.text.xe_table import xe_quantile_table


def _windows(n=12, ctx=16, vocab=300, seed=0):
    return torch.randint(1, vocab, (n, ctx), generator=torch.Generator().manual_seed(seed))


def test_xe_table_is_the_xe_of_each_truncated_window(tiny_llama, one_thread):
    windows = _windows(20)
    table = xe_quantile_table(tiny_llama, windows, batch=8)
    assert table["xe_lengths"].tolist() == list(range(2, 17))
    for length in (2, 7, 16):  # the text of `length` tokens alone, through lm.xe.sequence_xe
        ids = windows[:, :length]
        with torch.no_grad():
            xe = sequence_xe(tiny_llama(input_ids=ids).logits, ids, torch.ones_like(ids, dtype=torch.bool))
        q = torch.quantile(xe.double(), torch.tensor([0.0, 0.5, 0.9, 1.0], dtype=torch.double))
        row = table["xe_quantiles"][length - 2]
        assert torch.allclose(row[[0, 50, 90, 100]].double(), q, atol=1e-4)
    st = FeatureStats(table, {})
    got = st.xe_quantile(90, torch.tensor([1, 2, 16, 99]))  # clamped outside the table
    assert got.tolist() == pytest.approx([float(table["xe_quantiles"][i, 90]) for i in (0, 0, 14, 14)])
    mid = st.xe_quantile(90.5, torch.tensor([8]))
    lo, hi = table["xe_quantiles"][6, 90], table["xe_quantiles"][6, 91]
    assert float(mid) == pytest.approx(float(lo + hi) / 2, rel=1e-5)
