"""The shipped statistics are what they claim: a slice of their sample recomputed gives every shipped example
in it (and misses none), sampled latents' examples scored alone give their values, and the shipped XE table
is natural prose's."""

from __future__ import annotations

import pytest
import torch

from featuredream.models.xe import sequence_xe
from featuredream.saes.activations import site_activations
from featuredream.saes.loading import load_sae
from featuredream.saes.stats import verify_examples

# ------------------------------------------------------------------------------------------------ shipped

SLICE = 96
"""Windows of the recipe's sample recomputed by the slice check (~6k tokens per SAE)."""


@torch.no_grad()
def _window_values(model, sae, windows: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each window's pre-activations of every latent, ``[n, ctx, d_sae]`` (-inf over the norm cap), run
    ``batch`` windows at a time (as the pass does), and its norms' validity."""
    out = []
    for part in windows.split(batch):
        x = site_activations(model, sae.site, part, torch.ones_like(part, dtype=torch.bool))
        pre = sae.pre_activation(x).float()
        out.append(pre.masked_fill((x.float().norm(dim=-1) > sae.stats.norm_cap)[..., None], -torch.inf))
    return torch.cat(out)


def _rounding(model, sae, wins: torch.Tensor, vals: torch.Tensor) -> float:
    """The pass's own rounding on these windows: the largest |float32 - float64| pre-activation."""
    import copy

    model64, sae64 = copy.deepcopy(model).double(), copy.deepcopy(sae)
    sae64.sae.double()
    exact = _window_values(model64, sae64, wins, 32)
    ok = torch.isfinite(vals) & torch.isfinite(exact)
    return float((vals.double() - exact)[ok].abs().max())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-res12", "smollm2-q18h6"])
def test_a_slice_of_the_recipe_recomputes_every_shipped_example_in_it(default_model, name):
    """The first windows of the shipped statistics' sample, recomputed: every shipped example whose window
    is among them has the recorded value at the recorded position, which is that window's maximum; and no
    window of the slice beats a latent's last shipped example without being one of its examples (nothing
    missed). The tolerance is the pass's own rounding, measured on these windows against a float64 pass:
    two float32 computations (the shipped one, made on another machine, maybe under load, when the math
    library runs fewer threads, and this one) may each be that far from the exact value, so they may differ
    by twice that (4x here, for margin), never by more. The rounding is an absolute difference of
    pre-activations, so the tolerance is absolute (~1.4e-3 here, 5e-5 of a maximum of ~30)."""
    from featuredream.saes.stats import shipped_config
    from featuredream.text.corpus import default_corpus, split_windows

    model, tok = default_model
    sae = load_sae(name, model=model)
    st, cfg = sae.stats, shipped_config(sae.stats.info)
    gen = torch.Generator().manual_seed(cfg.seed)
    wins, _ = split_windows(tok, default_corpus(), cfg.ctx, cfg.tokens, cfg.heldout_tokens, gen)
    wins = wins[:SLICE]
    vals = _window_values(model, sae, wins, 32)
    tol = max(4 * _rounding(model, sae, wins, vals), 1e-5)
    best, where = vals.max(dim=1)  # [n, d_sae]: each window's maximum and its position
    checked = 0
    for lat in range(sae.d_sae):
        mine = set()
        for j in range(st.top_pos.shape[1]):
            pos = int(st.top_pos[lat, j])
            if pos < 0:
                continue
            ctx = st.top_tokens[lat, j, : pos + 1].long()
            hit = (wins[:, : pos + 1] == ctx).all(1).nonzero().flatten().tolist()
            if not hit:
                continue
            w, v = hit[0], float(st.top_values[lat, j])
            mine.add(w)
            checked += 1
            assert abs(float(vals[w, pos, lat]) - v) <= tol, (
                lat,
                j,
                float(vals[w, pos, lat]),
                v,
                tol,
            )
            assert int(where[w, lat]) == pos or float(best[w, lat]) <= v + tol, (lat, j)
        last = float(st.top_values[lat, -1])
        beats = (best[:, lat] > last + tol).nonzero().flatten().tolist()
        assert set(beats) <= mine, f"latent {lat}: windows {sorted(set(beats) - mine)} beat its last example"
    assert checked >= 20, f"only {checked} shipped examples fall in the slice"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-res12", "smollm2-q18h6"])
def test_shipped_examples_of_sampled_latents_reproduce_alone(default_model, name):
    """Every example of 16 seeded latents and the best example of 256 more, each scored alone from its
    stored context, give the recorded value (~1e-3); every latent's maximum is its best example's value.
    (Every latent's best example: ``pytest --release``, tests/saes/test_release.py.)"""
    model, _ = default_model
    sae = load_sae(name, model=model)
    st = sae.stats
    live = [lat for lat in range(sae.d_sae) if st.top_pos[lat, 0] >= 0]
    assert len(live) >= 0.95 * sae.d_sae
    assert torch.equal(st.max_activation[live], st.top_values[live, 0])
    order = torch.randperm(sae.d_sae, generator=torch.Generator().manual_seed(0)).tolist()
    pairs = [(lat, 0) for lat in order[16:272] if st.top_pos[lat, 0] >= 0]
    pairs += [(lat, j) for lat in order[:16] for j in range(st.top_pos.shape[1]) if st.top_pos[lat, j] >= 0]
    err = verify_examples(model, sae, pairs)
    worst = int(err.argmax())
    assert float(err.max()) < 1e-3, f"{name}: example {pairs[worst]} off by {float(err.max()):.2e} (relative)"


@pytest.mark.slow
def test_shipped_xe_table_matches_held_out_text(default_model):
    """p90 of the shipped table (the model's table on the prose reference): about 90% of other prose windows
    (cut at 48 tokens, another seed: not the table's windows) fall under it, at 16 and 48 tokens."""
    from featuredream.models.identity import FIXTURE_DIR
    from featuredream.text.corpus import make_windows
    from featuredream.text.prose import prose_documents

    model, tok = default_model
    st = load_sae("default", model=model, stats_dir=FIXTURE_DIR / "smollm2-res12").stats
    g = torch.Generator().manual_seed(1)  # not the seed the table's windows were drawn with
    halves = [make_windows(tok, docs, 48)[0] for docs in prose_documents()]
    sample = torch.cat([w[torch.randperm(len(w), generator=g)[:80]] for w in halves])
    for length in (16, 48):
        ids = sample[:, :length]
        with torch.no_grad():
            xe = torch.cat(
                [
                    sequence_xe(model(input_ids=b).logits, b, torch.ones_like(b, dtype=torch.bool))
                    for b in ids.split(32)
                ]
            )
        p90 = float(st.xe_quantile(90, torch.tensor([length])))
        share = float((xe <= p90).float().mean())
        assert 0.8 <= share <= 0.97, f"{share:.2f} of held-out {length}-token windows under p90 = {p90:.2f}"
