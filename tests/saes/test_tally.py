"""The tally (the one statistics engine) over activations already captured: each stored context scored alone
gives its recorded value, the values are each latent's best over the windows, and activations of other
windows are refused."""

from __future__ import annotations

import pytest
import torch
from helpers.saes import write_sae_dir

from featuredream.saes.loading import FeatureStats, load_sae
from featuredream.saes.stats import verify_examples
from featuredream.saes.tally import statistics_from_activations


def _windows(n=12, ctx=16, vocab=300, seed=0):
    return torch.randint(1, vocab, (n, ctx), generator=torch.Generator().manual_seed(seed))


def _hidden(model, ids, layer=1):
    """resid_post of decoder layer ``layer``, written here without featuredream: hidden_states[layer + 1]."""
    return model(input_ids=ids, output_hidden_states=True).hidden_states[layer + 1]


@pytest.fixture
def stats_sae(tmp_path, tiny_llama, one_thread):
    """A tiny SAE whose statistics are the tally of its activations over random windows."""
    windows = _windows()
    with torch.no_grad():
        acts = _hidden(tiny_llama, windows)
    d = write_sae_dir(tmp_path / "sae", d_sae=32)
    sae = load_sae(d, model=tiny_llama)
    keep = torch.ones(windows.shape, dtype=torch.bool)
    keep[:, 0] = False  # like the norm cap on each window's first token
    feats = statistics_from_activations(sae, acts, keep, windows, k=3, after=2)
    sae.stats = FeatureStats(feats, {})
    return sae, windows, acts, keep


def test_stored_context_scored_alone_reproduces_the_value(stats_sae, tiny_llama):
    sae, windows, acts, keep = stats_sae
    st = sae.stats
    pairs = [(lat, j) for lat in range(sae.d_sae) for j in range(3) if st.top_pos[lat, j] >= 0]
    assert len(pairs) == 3 * sae.d_sae
    for lat, j in pairs[:: max(1, len(pairs) // 12)]:  # independently: plain hidden_states, weights by hand
        pos = int(st.top_pos[lat, j])
        ctx = st.top_tokens[lat, j, : pos + 1].long()
        win = int(((windows[:, : pos + 1] == ctx).all(1)).nonzero()[0])
        assert torch.equal(windows[win, : pos + 1], ctx)  # the context is the window from its start
        with torch.no_grad():
            x = _hidden(tiny_llama, ctx[None])[0, -1]
        s = sae.sae
        want = float((x - s.b_dec) @ s.W_enc[:, lat] + s.b_enc[lat])
        assert float(st.top_values[lat, j]) == pytest.approx(want, rel=1e-4, abs=1e-5)
        n_after = int((st.top_tokens[lat, j] >= 0).sum()) - pos - 1
        assert n_after == min(2, windows.shape[1] - pos - 1)
        assert pos >= 1  # capped first tokens never count
    err = verify_examples(tiny_llama, sae, pairs)
    assert float(err.max()) < 1e-3


def test_values_are_each_latents_best_over_the_windows(stats_sae):
    sae, windows, acts, keep = stats_sae
    with torch.no_grad():
        pre = sae.pre_activation(acts).float()
    pre = pre.masked_fill(~keep[..., None], -torch.inf)
    per_window = pre.max(1).values  # [n, d_sae]
    top = per_window.topk(3, dim=0).values.T  # one example per window
    assert torch.allclose(sae.stats.top_values, top, atol=1e-5)
    assert torch.allclose(sae.stats.max_activation, top[:, 0], atol=1e-5)


def test_mismatched_windows_and_activations_are_refused(stats_sae):
    sae, windows, acts, keep = stats_sae
    with pytest.raises(ValueError, match="do not match windows"):
        statistics_from_activations(sae, acts[:-1], keep[:-1], windows, k=3)
