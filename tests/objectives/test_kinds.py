import pytest
import torch

from featuredream.models.sites import Site, run_sites
from featuredream.objectives.kinds import (
    DecoderProjection,
    DirectionObjective,
    FunctionObjective,
    SAEEncoder,
    WeightedSum,
    last_real_index,
    reduce_positions,
)

SITE = Site("resid_post", 1)


def test_last_real_index_left_and_right_padding():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_real_index(right).tolist() == [2, 4]
    assert last_real_index(left).tolist() == [4, 4]


def test_reductions_ignore_padding():
    acts = torch.tensor([[1.0, 5.0, 2.0, 99.0], [3.0, -1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]).bool()
    assert reduce_positions(acts, mask, mask, "last").tolist() == [2.0, -1.0]
    assert reduce_positions(acts, mask, mask, "max").tolist() == [5.0, 3.0]
    torch.testing.assert_close(reduce_positions(acts, mask, mask, "mean"), torch.tensor([8 / 3, 1.0]))
    # left padding: same values shifted right
    lacts = torch.tensor([[99.0, 1.0, 5.0, 2.0], [0.0, 0.0, 3.0, -1.0]])
    lmask = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]]).bool()
    for how in ("last", "max", "mean"):
        torch.testing.assert_close(
            reduce_positions(lacts, lmask, lmask, how), reduce_positions(acts, mask, mask, how)
        )


def test_norm_guard_excludes_positions():
    acts = torch.tensor([[1.0, 50.0, 2.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    valid = torch.tensor([[True, False, True]])
    assert reduce_positions(acts, valid, mask, "max").item() == 2.0
    valid_last = torch.tensor([[True, True, False]])
    assert reduce_positions(acts, valid_last, mask, "last").item() == float("-inf")


def _acts(model, ids):
    acts, _ = run_sites(model, [SITE], input_ids=ids)
    return acts


def test_encoder_equals_hand_computation(tiny_llama, tiny_sae):
    ids = torch.randint(1, 300, (3, 6))
    acts = _acts(tiny_llama, ids)
    mask = torch.ones(3, 6, dtype=torch.bool)
    sae = tiny_sae.sae
    x = acts[SITE]
    hand = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc)[..., 7]
    for how, red in (("last", hand[:, -1]), ("max", hand.max(1).values), ("mean", hand.mean(1))):
        out = SAEEncoder(tiny_sae, 7, reduce=how)(acts, mask)
        torch.testing.assert_close(out.scores, red)
        torch.testing.assert_close(out.token_acts, hand)
    # the pre-activation is what sae-lens computes before TopK
    cache = {}
    h = sae.hook_sae_acts_pre.register_forward_hook(lambda m, a, o: cache.setdefault("pre", o))
    sae.encode(x)
    h.remove()
    torch.testing.assert_close(cache["pre"][..., 7], hand)


def test_decoder_projection_equals_hand_computation(tiny_llama, tiny_sae):
    ids = torch.randint(1, 300, (2, 5))
    acts = _acts(tiny_llama, ids)
    mask = torch.ones(2, 5, dtype=torch.bool)
    d = tiny_sae.sae.W_dec[3]
    hand = acts[SITE] @ (d / d.norm())
    out = DecoderProjection(tiny_sae, 3, reduce="last")(acts, mask)
    torch.testing.assert_close(out.scores, hand[:, -1])


def test_direction_function_and_sum(tiny_llama, tiny_sae):
    ids = torch.randint(1, 300, (2, 5))
    acts = _acts(tiny_llama, ids)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]).bool()
    v = torch.randn(64)
    d = DirectionObjective(SITE, v, reduce="max")(acts, mask)
    f = FunctionObjective(lambda a: a[SITE] @ (v / v.norm()), [SITE], reduce="max")(acts, mask)
    torch.testing.assert_close(d.scores, f.scores)
    enc = SAEEncoder(tiny_sae, 1)
    s = WeightedSum([(2.0, enc), (-1.0, DecoderProjection(tiny_sae, 1))])(acts, mask)
    torch.testing.assert_close(
        s.scores, 2 * enc(acts, mask).scores - DecoderProjection(tiny_sae, 1)(acts, mask).scores
    )


@pytest.mark.parametrize("bad", [-1, 128, 10**9, "x", 1.5])
def test_latent_out_of_range(tiny_sae, bad):
    with pytest.raises(ValueError, match="valid are 0..127"):
        SAEEncoder(tiny_sae, bad)


def test_bad_reduce_and_direction(tiny_sae):
    with pytest.raises(ValueError, match="valid are last, max, mean"):
        SAEEncoder(tiny_sae, 0, reduce="median")
    with pytest.raises(ValueError, match="non-zero"):
        DirectionObjective(SITE, torch.zeros(64))


@pytest.mark.parametrize("how", ["last", "max", "mean"])
def test_reduce_positions_over_trailing_dims_equals_each_column(how):
    """One reduction for ``[b, s]`` and ``[b, s, K]`` (the group's K latents, observe's d_sae values): each
    column reduced alone gives the same; a row with no valid position gets ``empty``."""
    from featuredream.objectives.kinds import reduce_positions

    g = torch.Generator().manual_seed(0)
    acts = torch.randn(4, 6, 3, generator=g)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [0, 0, 1, 1, 1, 1], [1] * 6]).bool()
    valid = mask.clone()
    valid[1, 3] = False  # the last real token of row 1 is capped
    valid[3] = False  # nothing valid in row 3
    whole = reduce_positions(acts, valid, mask, how, empty=-7.0)
    cols = torch.stack([reduce_positions(acts[..., k], valid, mask, how, empty=-7.0) for k in range(3)], 1)
    torch.testing.assert_close(whole, cols)
    assert (whole[3] == -7.0).all()
    if how == "last":
        assert (whole[1] == -7.0).all() and torch.equal(whole[2], acts[2, 5])
    if how == "max":
        torch.testing.assert_close(whole[1], acts[1, :3].max(0).values)
