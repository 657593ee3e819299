"""Attention-head query features: query SAEs bound by hook_head_index, query directions, dreaming them."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.cli import dream_args, run_cli
from helpers.saes import write_sae_dir

from featuredream.engine.config import DreamConfig
from featuredream.engine.dream import dream
from featuredream.evaluation.evaluate import reference_evaluate
from featuredream.models.sites import Site, run_sites
from featuredream.objectives.kinds import QueryDirection, QueryFeature, make_objective
from featuredream.saes.check import adjacent_sites
from featuredream.saes.loading import load_sae


def _query_sae(tmp_path, model, head=2, layer=1, seed=0):
    path = write_sae_dir(
        tmp_path / f"q{layer}-{head}",
        d_in=16,
        d_sae=32,
        hook=f"blocks.{layer}.attn.hook_q",
        head=head,
        seed=seed,
    )
    return load_sae(path, model=model)


def test_head_index_sae_binds_and_scores_by_hand(tiny_model, tmp_path):
    sae = _query_sae(tmp_path, tiny_model)
    assert sae.site == Site("attn_q", 1, 2) and sae.d_in == 16
    obj = make_objective(sae, 5, reduce="max")
    assert isinstance(obj, QueryFeature) and "L1 H2" in obj.name and obj.sites == (Site("attn_q", 1, 2),)
    ids = torch.randint(1, 300, (2, 6))
    blk = tiny_model.model.layers[1]
    hs = tiny_model(ids, output_hidden_states=True).hidden_states[1]
    q = blk.self_attn.q_proj(blk.input_layernorm(hs)).view(2, 6, 4, 16)[:, :, 2]
    W, b, b_dec = sae.sae.W_enc, sae.sae.b_enc, sae.sae.b_dec
    expect = ((q - b_dec) @ W[:, 5] + b[5]).max(dim=1).values
    acts, _ = run_sites(tiny_model, obj.sites, input_ids=ids)
    out = obj(acts, torch.ones(2, 6, dtype=torch.bool))
    torch.testing.assert_close(out.scores, expect, atol=1e-5, rtol=1e-4)


def test_whole_layer_query_sae_binds_without_head(tiny_llama, tmp_path):
    path = write_sae_dir(tmp_path / "qall", d_in=64, hook="blocks.1.attn.hook_q")
    sae = load_sae(path, model=tiny_llama)
    assert sae.site == Site("attn_q", 1) and sae.site.head is None
    with pytest.raises(ValueError, match="not one attention head's query"):
        QueryFeature(sae, 0)
    assert not isinstance(make_objective(sae, 0), QueryFeature)  # a plain encoder on the flattened layer


def test_query_direction_is_a_key_match(tiny_llama):
    g = torch.Generator().manual_seed(0)
    k = torch.randn(16, generator=g)
    obj = QueryDirection(1, 3, k, reduce="last", model=tiny_llama)
    ids = torch.randint(1, 300, (1, 5))
    acts, _ = run_sites(tiny_llama, [Site("attn_q", 1, 3)], input_ids=ids)
    expect = acts[Site("attn_q", 1, 3)][0, -1] @ (k / k.norm())
    torch.testing.assert_close(obj(acts, torch.ones(1, 5, dtype=torch.bool)).scores[0], expect)
    assert QueryDirection(1, 3, k, rotary=True).sites == (Site("attn_q_rot", 1, 3),)


def test_query_bad_input(tiny_llama, tmp_path):
    with pytest.raises(ValueError, match="head index 9 out of range: valid heads are 0..3"):
        _query_sae(tmp_path, tiny_llama, head=9)
    with pytest.raises(ValueError, match=r"has width 16: valid is a vector of 16"):
        QueryDirection(1, 0, torch.ones(20), model=tiny_llama)
    with pytest.raises(ValueError, match="head index 4 out of range"):
        QueryDirection(1, 4, torch.ones(16), model=tiny_llama)
    with pytest.raises(ValueError, match="valid layers are 0..2"):
        QueryDirection(5, 0, torch.ones(16), model=tiny_llama)


def test_adjacent_sites_of_a_head(tiny_llama):  # 3 layers, 4 query heads, 2 key/value heads
    alt = set(adjacent_sites(Site("attn_q", 1, 2), tiny_llama))
    assert {Site("attn_q", 1, h) for h in (0, 1, 3)} <= alt
    assert {Site("attn_q", 0, 2), Site("attn_q", 2, 2), Site("attn_q_rot", 1, 2)} <= alt
    # key heads: one representative of each *other* key/value group
    assert set(adjacent_sites(Site("attn_k", 0, 0), tiny_llama)) == {
        Site("attn_k", 0, 2),
        Site("attn_k", 1, 0),
    }


def test_check_site_catches_wrong_head(tiny_llama, tiny_tokenizer, tmp_path):
    """A query SAE fitted to head 1 but declared for head 2 is caught by comparing the heads."""
    from featuredream.models.sites import run_sites
    from featuredream.saes.check import check_site

    ids = torch.randint(1, 300, (8, 12))
    acts, _ = run_sites(tiny_llama, [Site("attn_q", 1, 1)], input_ids=ids)
    x = acts[Site("attn_q", 1, 1)].reshape(-1, 16)
    # a 'PCA SAE' of head 1: top-8 principal directions, so it reconstructs head 1 better than others
    mean = x.mean(0)
    _, _, v = torch.linalg.svd(x - mean, full_matrices=False)
    path = write_sae_dir(
        tmp_path / "pca", d_in=16, d_sae=16, hook="blocks.1.attn.hook_q", head=2, arch="standard"
    )
    from safetensors.torch import save_file

    basis = v[:8]
    save_file(
        {
            "W_enc": torch.cat([basis, -basis]).T.contiguous(),
            "b_enc": torch.zeros(16),
            "W_dec": torch.cat([basis, -basis]).contiguous(),
            "b_dec": mean.contiguous(),
        },
        str(path / "sae_weights.safetensors"),
    )
    sae = load_sae(path, model=tiny_llama)
    with pytest.raises(ValueError, match=r"reconstructs better at blocks.1.attn.hook_q\[head 1\]"):
        check_site(tiny_llama, tiny_tokenizer, sae, max_fvu=1.0)


def test_dreaming_a_query_latent_raises_it(tiny_llama, tiny_tokenizer, tmp_path):
    sae = _query_sae(tmp_path, tiny_llama, seed=4)
    obj = make_objective(sae, 7)
    start = "The quick brown fox"
    cfg = DreamConfig(
        iters=8,
        n_children=24,
        min_tokens=3,
        max_tokens=12,
        progress=False,
        init_prompt=start,
        start="prompt",
        seed=1,
    )
    r = dream(tiny_llama, tiny_tokenizer, obj, cfg)
    before = float(reference_evaluate(tiny_llama, tiny_tokenizer, obj, [start]).scores[0])
    assert r.best.activation > before + 0.1
    assert r.site == "blocks.1.attn.hook_q[head 2]" and "query[L1 H2]" in r.objective
    ref = reference_evaluate(tiny_llama, tiny_tokenizer, obj, [r.best.text])
    assert abs(float(ref.scores[0]) - r.best.activation) <= 1e-4


def test_cli_query_sae_and_key_text(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "q.json"
    args = dream_args(tiny_dirs, out)
    code, cap = run_cli(capsys, args + ["--sae", tiny_dirs["query"], "--feature", "3"])
    assert code == 0, cap.err
    res = json.loads(out.read_text())
    assert res["site"] == "blocks.1.attn.hook_q[head 2]" and res["feature"] == 3
    code, cap = run_cli(capsys, args + ["--site", "attn_q:1:2", "--key-text", "the lazy dog"])
    assert code == 0, cap.err
    res = json.loads(out.read_text())
    assert res["site"] == "blocks.1.attn.hook_q[head 2]" and res["objective"].startswith(
        "query-direction@L1 H2"
    )
    vec = tmp_path / "d.json"
    vec.write_text(json.dumps([1.0] * 16))
    code, cap = run_cli(capsys, args + ["--site", "attn_q_rot:1:0", "--direction", str(vec)])
    assert code == 0 and json.loads(out.read_text())["site"] == "blocks.1.attn.hook_rot_q[head 0]"


BAD = [
    (["--sae", "QUERY9", "--feature", "1"], "head index 9 out of range: valid heads are 0..3"),
    (["--site", "attn_q:1:2", "--direction", "VEC20"], "has width 16: valid is a vector of 16"),
    (["--site", "attn_q:1:7", "--key-text", "dog"], "head index 7 out of range"),
    (["--site", "attn_q_rot:1:2", "--key-text", "dog"], "needs a pre-rotary query site"),
    (["--site", "attn_q:1:2"], "--site needs --direction"),
    (["--key-text", "dog"], "need --site"),
    (["--site", "attn_q:1:2", "--direction", "/no/such.json"], "does not exist"),
    ([], "no target"),
]


@pytest.mark.parametrize("extra,msg", BAD, ids=[m for _, m in BAD])
def test_cli_query_bad_input(tiny_dirs, tmp_path, capsys, extra, msg):
    vec = tmp_path / "v20.json"
    vec.write_text(json.dumps([0.5] * 20))
    sub = {"QUERY9": tiny_dirs["query9"], "VEC20": str(vec)}
    args = [a for a in dream_args(tiny_dirs, tmp_path / "r.json")]
    code, cap = run_cli(capsys, args + [sub.get(e, e) for e in extra])
    err = [ln for ln in cap.err.splitlines() if ln.strip()]
    assert code == 2 and len(err) == 1 and msg in err[0], cap.err
