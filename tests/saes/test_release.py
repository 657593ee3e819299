"""Release checks: the whole shipped statistics recomputed (6 minutes of the full 600k-token pass) and every
latent's best example scored alone. They run with ``python -m pytest --release -m release`` before shipping
remade statistics; the suite's cheaper checks (tests/saes/test_shipped.py: a slice of the same pass, and
sampled latents) fail on the same breaks."""

from __future__ import annotations

import pytest
import torch

from featuredream.saes.loading import load_sae
from featuredream.saes.stats import StatsInputs, compute_statistics, shipped_config, verify_examples

pytestmark = pytest.mark.release


def test_recomputed_statistics_of_the_shipped_sae_equal_the_shipped_file(default_model, tmp_path):
    """The command's pass on the default corpus with the shipped recipe's windows gives the shipped
    maxima and top examples (the shipped file was made by this pass: scripts/regenerate_statistics.py)."""
    from featuredream.models.identity import FIXTURE_DIR
    from featuredream.models.loading import DEFAULT_MODEL
    from featuredream.text.corpus import default_corpus

    model, tok = default_model
    shipped = load_sae("default", model=model, stats_dir=FIXTURE_DIR / "smollm2-res12")  # not a cached pass
    cfg = shipped_config(shipped.stats.info)
    inp = StatsInputs(
        model, tok, shipped, default_corpus(), "default", DEFAULT_MODEL, "fixture:smollm2-res12"
    )
    st = compute_statistics(inp, cfg, tmp_path / "res12")
    ship = shipped.stats
    assert st.info["windows_digest"] == ship.info["windows_digest"]
    torch.testing.assert_close(st.max_activation, ship.max_activation, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(st.top_values, ship.top_values, rtol=2e-3, atol=2e-3)
    same = (st.top_tokens == ship.top_tokens).all(-1) & (st.top_pos == ship.top_pos)
    assert float(same[:, 0].float().mean()) == 1.0  # every latent's best example
    assert float(same.float().mean()) > 0.999  # near-ties below the best may swap slots
    torch.testing.assert_close(st.fire_rate, ship.fire_rate, rtol=0, atol=1e-5)
    torch.testing.assert_close(st.xe_quantiles, ship.xe_quantiles, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["smollm2-res12", "smollm2-q18h6"])
def test_every_latents_best_example_reproduces_alone(default_model, name):
    """Every latent's best example (its dataset maximum: every ratio's denominator), scored alone from its
    stored context, gives the recorded value."""
    model, _ = default_model
    sae = load_sae(name, model=model)
    st = sae.stats
    pairs = [(lat, 0) for lat in range(sae.d_sae) if st.top_pos[lat, 0] >= 0]
    err = verify_examples(model, sae, pairs)
    assert float(err.max()) < 1e-3, (
        f"{name}: example {pairs[int(err.argmax())]} off by {float(err.max()):.2e}"
    )
