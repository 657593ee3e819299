"""TransformerLens models through the adapter (featuredream.models.tl): a tiny HookedTransformer with the tiny
transformers Llama's weights (TransformerLens' own Llama conversion, no folding or centering) gives the same
site activations, objective scores, XE, gradients and dreams; sae-lens SAEs with TransformerLens hook names
bind to it; bad input fails in one line."""

import copy
import sys
from types import SimpleNamespace

import pytest
import torch
from helpers.saes import write_sae_dir

pytest.importorskip("transformer_lens")

from featuredream.engine.config import DreamConfig  # noqa: E402
from featuredream.engine.dream import dream, dream_many  # noqa: E402
from featuredream.evaluation.evaluate import Evaluator, reference_evaluate  # noqa: E402
from featuredream.evaluation.parent_grads import batched_parent_signals  # noqa: E402
from featuredream.models.padding import pad  # noqa: E402
from featuredream.models.sites import KINDS, Site, hook_site, run_sites  # noqa: E402
from featuredream.models.tl import TLModel, as_model, hooked_from_hf, load_tl_model  # noqa: E402
from featuredream.objectives.group import MultiLatentObjective, Single  # noqa: E402
from featuredream.objectives.kinds import QueryDirection, QueryFeature, SAEEncoder, make_objective  # noqa: E402
from featuredream.observe.activity import top_features  # noqa: E402
from featuredream.observe.tracing import attribution, logit_effects, steer, steering  # noqa: E402
from featuredream.saes.activations import site_activations  # noqa: E402
from featuredream.saes.loading import load_sae  # noqa: E402

FAST = dict(
    iters=6, n_children=24, min_tokens=3, max_tokens=14, progress=False, n_start_samples=3, gcg_topk=32
)
PROMPTS = ["The quick brown fox jumps", "To be, or not to be, that is", "Once upon a time"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here on one thread (conftest.one_thread)."""


def tl_config(hf, **over):
    from transformer_lens import HookedTransformerConfig

    c = hf.config
    cfg = dict(
        d_model=c.hidden_size,
        d_head=c.head_dim,
        n_heads=c.num_attention_heads,
        n_key_value_heads=c.num_key_value_heads,
        d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers,
        n_ctx=c.max_position_embeddings,
        d_vocab=c.vocab_size,
        act_fn="silu",
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_dim=c.head_dim,
        rotary_adjacent_pairs=False,
        rotary_base=10000.0,
        gated_mlp=True,
        final_rms=True,
        eps=c.rms_norm_eps,
        model_name="tiny-tl",
        original_architecture="LlamaForCausalLM",
        device="cpu",
        dtype=torch.float32,
    )
    return HookedTransformerConfig(**{**cfg, **over})


@pytest.fixture(scope="module")
def tiny_tl(tiny_llama, tiny_tokenizer):
    """A HookedTransformer with the tiny Llama's weights (TransformerLens' Llama conversion)."""
    from transformer_lens import HookedTransformer
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

    cfg = tl_config(tiny_llama)
    # a copy: TransformerLens sets a missing bos_token on the tokenizer it is given
    ht = HookedTransformer(cfg, tokenizer=copy.deepcopy(tiny_tokenizer))
    ht.load_state_dict(convert_llama_weights(tiny_llama, cfg), strict=False)
    return ht.eval()


@pytest.fixture
def tl_sae(tmp_path, tiny_tl):
    return load_sae(write_sae_dir(tmp_path / "sae"), model=tiny_tl)


def _ids(tok, text):
    return torch.tensor(tok(text, add_special_tokens=False)["input_ids"])


def test_as_model_wraps_only_transformer_lens_models(tiny_tl, tiny_llama):
    m = as_model(tiny_tl)
    assert isinstance(m, TLModel) and as_model(m) is m and as_model(tiny_llama) is tiny_llama
    assert m.config.num_hidden_layers == 3 and m.config.num_key_value_heads == 2
    assert m.get_input_embeddings().weight.shape == tiny_llama.get_input_embeddings().weight.shape
    assert next(m.parameters()).requires_grad is False


def test_hooked_from_hf_converts_offline(tiny_tl, tiny_llama, tiny_gemma, tiny_tokenizer):
    ht = hooked_from_hf(tiny_llama)
    assert ht.cfg.model_name == "tiny-llama"
    ids = _ids(tiny_tokenizer, PROMPTS[0])[None]
    torch.testing.assert_close(ht(ids), tiny_tl(ids), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError) as e:  # no architecture name TransformerLens maps without a hub name
        hooked_from_hf(tiny_gemma)
    assert "\n" not in str(e.value) and "Gemma2ForCausalLM" in str(e.value)


def test_site_activations_and_logits_match(tiny_tl, tiny_llama, tiny_tokenizer):
    ids, _ = pad([_ids(tiny_tokenizer, t) for t in PROMPTS], 0)
    sites = [Site(k, layer) for k in KINDS for layer in (0, 2)]
    sites += [Site("attn_q", 1, 2), Site("attn_q_rot", 1, 3), Site("attn_k", 2, 3), Site("attn_v", 1, 1)]
    sites += [Site("attn_z", 0, 1)]
    ref, ref_logits = run_sites(tiny_llama, sites, input_ids=ids, logits=True)
    got, logits = run_sites(tiny_tl, sites, input_ids=ids, logits=True)
    for s in sites:
        assert got[s].shape == ref[s].shape, s
        torch.testing.assert_close(got[s], ref[s], atol=1e-5, rtol=1e-5, msg=str(s))
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    # left padding: positions from the mask in both
    seqs = [tiny_tokenizer(t, add_special_tokens=False)["input_ids"] for t in PROMPTS]
    pids, mask = pad(seqs, 0, "left")
    a = site_activations(tiny_llama, Site("resid_post", 1), pids, mask)
    b = site_activations(as_model(tiny_tl), Site("resid_post", 1), pids, mask)
    torch.testing.assert_close(b[mask], a[mask], atol=1e-5, rtol=1e-5)


def test_scores_xe_and_gradients_match(tiny_tl, tiny_llama, tiny_tokenizer, tiny_sae, tl_sae):
    ids, mask = pad([_ids(tiny_tokenizer, t) for t in PROMPTS], 0)
    lengths = mask.sum(1)
    for kind, reduce in (("encoder", "last"), ("decoder", "mean")):
        ref = Evaluator(tiny_llama, make_objective(tiny_sae, 11, kind, reduce))(ids, lengths)
        got = Evaluator(tiny_tl, make_objective(tl_sae, 11, kind, reduce))(ids, lengths)
        for r, g in zip(ref, got):
            torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)
    ref = reference_evaluate(tiny_llama, tiny_tokenizer, SAEEncoder(tiny_sae, 3), PROMPTS)
    got = reference_evaluate(tiny_tl, tiny_tokenizer, SAEEncoder(tl_sae, 3), PROMPTS)
    torch.testing.assert_close(got.scores, ref.scores, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.xe, ref.xe, atol=1e-5, rtol=1e-5)
    # GCG's one-hot gradient from W_E (inputs_embeds through hook_embed) and the next-token log-probs
    parents = [_ids(tiny_tokenizer, t) for t in PROMPTS[:2]]
    sig = [
        batched_parent_signals(m, Single(SAEEncoder(s, 11)), parents, [0, 0], [0.5, 0.5])
        for m, s in ((tiny_llama, tiny_sae), (as_model(tiny_tl), tl_sae))
    ]
    for r, g in zip(*sig):
        torch.testing.assert_close(g.grad, r.grad, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(g.logprobs, r.logprobs, atol=1e-5, rtol=1e-5)
        assert abs(g.score - r.score) < 1e-5 and abs(g.xe - r.xe) < 1e-5


def test_head_sites_and_query_objectives_match(tmp_path, tiny_tl, tiny_llama, tiny_tokenizer):
    path = write_sae_dir(tmp_path / "q", d_in=16, d_sae=32, hook="blocks.1.attn.hook_q", head=2)
    hf_sae, tl_sae = load_sae(path, model=tiny_llama), load_sae(path, model=tiny_tl)
    assert tl_sae.site == Site("attn_q", 1, 2)
    key = torch.randn(16, generator=torch.Generator().manual_seed(0))
    ids, mask = pad([_ids(tiny_tokenizer, t) for t in PROMPTS], 0)
    lengths = mask.sum(1)
    for ref_obj, tl_obj in (
        (QueryFeature(hf_sae, 4), QueryFeature(tl_sae, 4)),
        (QueryDirection(1, 3, key, rotary=True), QueryDirection(1, 3, key, rotary=True, model=tiny_tl)),
    ):
        ref = Evaluator(tiny_llama, ref_obj)(ids, lengths)
        got = Evaluator(tiny_tl, tl_obj)(ids, lengths)
        torch.testing.assert_close(got.scores, ref.scores, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.xe, ref.xe, atol=1e-5, rtol=1e-5)
    # an attn_z head SAE writes to the residual stream through W_O: same logit effects
    path = write_sae_dir(tmp_path / "z", d_in=16, d_sae=32, hook="blocks.2.attn.hook_z", head=1)
    ref = logit_effects(tiny_llama, tiny_tokenizer, load_sae(path, model=tiny_llama), 5).values
    got = logit_effects(tiny_tl, tiny_tokenizer, load_sae(path, model=tiny_tl), 5).values
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_prefix_cache_falls_back_to_the_plain_path(tiny_tl, tl_sae, tiny_llama, tiny_sae):
    assert Evaluator(tiny_llama, SAEEncoder(tiny_sae, 1), prefix_cache=True).prefix_cache
    assert not Evaluator(tiny_tl, SAEEncoder(tl_sae, 1), prefix_cache=True).prefix_cache


def test_fixed_seed_dream_gives_the_same_best_prompt(tiny_tl, tiny_llama, tiny_tokenizer, tiny_sae, tl_sae):
    cfg = DreamConfig(**FAST, seed=3, init_prompt="The quick brown fox", start="prompt")
    ref = dream(tiny_llama, tiny_tokenizer, SAEEncoder(tiny_sae, 11), cfg)
    got = dream(tiny_tl, tiny_tokenizer, SAEEncoder(tl_sae, 11), cfg)
    assert got.best.text == ref.best.text
    assert abs(got.best.activation - ref.best.activation) < 1e-4 and abs(got.best.xe - ref.best.xe) < 1e-4
    assert got.model == "tiny-tl" and got.verification.abs_error <= got.verification.tolerance


def test_generate_matches_transformers(tiny_tl, tiny_llama, tiny_tokenizer):
    m = as_model(tiny_tl)
    ids = _ids(tiny_tokenizer, PROMPTS[0])[None]
    kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=8)
    ref = tiny_llama.generate(ids, pad_token_id=0, **kw)
    assert torch.equal(m.generate(ids, **kw), ref)
    eos = int(ref[0, ids.shape[1] + 2])  # stop at (at the latest) the third new token, as transformers does
    m.tokenizer = SimpleNamespace(eos_token_id=eos)
    got = m.generate(ids, **kw)
    assert torch.equal(got, tiny_llama.generate(ids, pad_token_id=0, eos_token_id=eos, **kw))
    assert got.shape[1] < ref.shape[1]
    assert m.generate(ids, **{**kw, "min_new_tokens": 8}).shape[1] == ids.shape[1] + 8  # model samples


def test_dream_many_and_model_samples(tiny_tl, tiny_tokenizer, tl_sae):
    cfg = DreamConfig(**{**FAST, "iters": 3}, start="samples", seed=1)
    out = dream_many(tiny_tl, tiny_tokenizer, MultiLatentObjective(tl_sae, [2, 9]), cfg)
    assert [r.feature for r in out] == [2, 9]
    for r in out:
        assert r.best.text and r.verification.abs_error <= r.verification.tolerance


def test_inspect_tracing_and_steering_match(tiny_tl, tiny_llama, tiny_tokenizer, tiny_sae, tl_sae):
    ref = top_features(tiny_llama, tiny_tokenizer, tiny_sae, PROMPTS[0], n=5)
    got = top_features(tiny_tl, tiny_tokenizer, tl_sae, PROMPTS[0], n=5)
    assert [r.feature_id for r in got] == [r.feature_id for r in ref]
    assert max(abs(g.score - r.score) for g, r in zip(got, ref)) < 1e-5
    torch.testing.assert_close(
        logit_effects(tiny_tl, tiny_tokenizer, tl_sae, 7).values,
        logit_effects(tiny_llama, tiny_tokenizer, tiny_sae, 7).values,
        atol=1e-4,
        rtol=1e-4,
    )
    a_ref = attribution(tiny_llama, tiny_tokenizer, SAEEncoder(tiny_sae, 7), PROMPTS[1])
    a_got = attribution(tiny_tl, tiny_tokenizer, SAEEncoder(tl_sae, 7), PROMPTS[1])
    torch.testing.assert_close(torch.tensor(a_got.scores), torch.tensor(a_ref.scores), atol=1e-4, rtol=1e-4)
    s_ref = steering(tiny_llama, tiny_tokenizer, tiny_sae, 7, PROMPTS[2], alphas=(0.0, 8.0), max_new_tokens=6)
    s_got = steering(tiny_tl, tiny_tokenizer, tl_sae, 7, PROMPTS[2], alphas=(0.0, 8.0), max_new_tokens=6)
    assert [s.ids for s in s_got] == [s.ids for s in s_ref]
    # the rotary query is read only, as on transformers models; hooks fire in the HookedTransformer's own forward
    handles = hook_site(tiny_tl, Site("attn_q_rot", 1), lambda x: x)
    try:
        with pytest.raises(ValueError, match="cannot be replaced"):
            tiny_tl(_ids(tiny_tokenizer, PROMPTS[0])[None])
    finally:
        for h in handles:
            h.remove()
    assert not tiny_tl.blocks[1].attn.hook_rot_q._forward_hooks
    with steer(tiny_tl, Site("resid_post", 0), torch.ones(64)):
        steered = tiny_tl(_ids(tiny_tokenizer, PROMPTS[0])[None])
    assert not torch.allclose(steered, tiny_tl(_ids(tiny_tokenizer, PROMPTS[0])[None]))


def test_tl_hook_name_sae_binds(tmp_path, tiny_tl):
    for hook, head, d_in, site in (
        ("blocks.2.hook_resid_pre", None, 64, Site("resid_pre", 2)),
        ("blocks.0.hook_mlp_out", None, 64, Site("mlp_out", 0)),
        ("blocks.1.attn.hook_z", None, 64, Site("attn_z", 1)),
        ("blocks.1.attn.hook_k", 3, 16, Site("attn_k", 1, 3)),
    ):
        sae = load_sae(write_sae_dir(tmp_path / hook, d_in=d_in, hook=hook, head=head), model=tiny_tl)
        assert sae.site == site


def test_bad_input_is_one_line(tmp_path, tiny_tl, tiny_llama, monkeypatch):
    with pytest.raises(ValueError) as e:
        load_sae(write_sae_dir(tmp_path / "wide", d_in=32), model=tiny_tl)
    msg = str(e.value)
    assert "\n" not in msg and "blocks.1.hook_resid_post" in msg and "32" in msg and "64" in msg
    # a model without rotary embeddings has no hook_rot_q
    from transformer_lens import HookedTransformer

    plain = HookedTransformer(
        tl_config(tiny_llama, positional_embedding_type="standard", model_name="no-rot")
    )
    path = write_sae_dir(tmp_path / "rot", d_in=16, hook="blocks.1.attn.hook_rot_q", head=0)
    with pytest.raises(ValueError) as e:
        load_sae(path, model=plain)
    msg = str(e.value)
    assert "\n" not in msg and "blocks.1.attn.hook_rot_q" in msg and "no hook point" in msg
    with pytest.raises(ValueError, match="beyond the model"):
        load_sae(write_sae_dir(tmp_path / "deep", hook="blocks.7.hook_resid_post"), model=tiny_tl)
    # transformer-lens missing: one line saying how to install it
    monkeypatch.setitem(sys.modules, "transformer_lens", None)
    for call in (lambda: load_tl_model("gpt2"), lambda: hooked_from_hf(tiny_llama)):
        with pytest.raises(ImportError) as e:
            call()
        assert "\n" not in str(e.value) and "pip install 'featuredream[tl]'" in str(e.value)


def test_layer_norm_model_logit_effects(tmp_path, tiny_llama, tiny_tokenizer):
    """A GPT-2-style TransformerLens model (LayerNorm with a gain, absolute positions): logit effects centre
    and scale by ``ln_final.w`` (TransformerLens' LayerNorm is not torch's)."""
    from transformer_lens import HookedTransformer

    cfg = tl_config(
        tiny_llama,
        normalization_type="LN",
        positional_embedding_type="standard",
        act_fn="gelu",
        gated_mlp=False,
        final_rms=False,
        n_key_value_heads=None,
        model_name="tiny-ln",
    )
    torch.manual_seed(0)
    ht = HookedTransformer(cfg)
    ht.ln_final.w.data = torch.rand(64) + 0.5
    sae = load_sae(write_sae_dir(tmp_path / "sae"), model=ht)
    d = sae.decoder_direction(4)
    want = ht.W_U.T @ (ht.ln_final.w * (d - d.mean()))
    torch.testing.assert_close(logit_effects(ht, tiny_tokenizer, sae, 4).values, want, atol=1e-5, rtol=1e-5)
    ids = _ids(tiny_tokenizer, PROMPTS[0])[None]
    got, logits = run_sites(ht, [sae.site], input_ids=ids, logits=True)
    _, cache = ht.run_with_cache(ids)
    torch.testing.assert_close(got[sae.site], cache["blocks.1.hook_resid_post"])
    torch.testing.assert_close(logits, ht(ids))


def test_sweep_group_runs_on_a_loaded_tl_model(tiny_tl, tiny_tokenizer, tl_sae):
    """In-process sweeps take a loaded (model, tokenizer, SAE): a HookedTransformer works there."""
    from featuredream.engine.results import DreamResult
    from featuredream.sweep.spec import SweepSpec
    from featuredream.sweep.worker import run_group

    spec = SweepSpec(config=DreamConfig(**{**FAST, "iters": 2}, start="prompt", init_prompt="Once upon"))
    out = run_group(spec, [3, 8], loaded=(tiny_tl, tiny_tokenizer, tl_sae))
    assert [f for f, _ in out] == [3, 8] and all(isinstance(r, DreamResult) for _, r in out)


# ------------------------------------------------------------------ `tl:NAME` model specs (CLI, sweeps)
def test_tl_model_spec_from_the_cli_and_a_sweep(tiny_dirs, tmp_path, capsys):
    """``--model tl:DIR`` dreams on a HookedTransformer built from DIR: the same best prompt and score as
    ``--model DIR`` (same weights, TransformerLens hook points); a sweep takes the spec and fingerprints it
    apart from the plain model (a store of one is refused for the other)."""
    import json

    from helpers.cli import dream_args, run_cli

    from featuredream.engine.config import DreamConfig
    from featuredream.models.loading import load_model
    from featuredream.models.tl import TLModel
    from featuredream.sweep import SweepSpec, parse_features, run_sweep

    model, _ = load_model("tl:" + tiny_dirs["model"])
    assert isinstance(model, TLModel) and model.name_or_path_.startswith("tl:")
    outs = {}
    for name in ("plain", "tl"):
        args = dream_args(tiny_dirs, tmp_path / f"{name}.json")
        if name == "tl":
            args[args.index("--model") + 1] = "tl:" + tiny_dirs["model"]
        code, _ = run_cli(capsys, args + ["--feature", "3", "--iters", "3", "--seed", "1"])
        assert code == 0
        outs[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert outs["tl"]["model"].startswith("tl:") and not outs["plain"]["model"].startswith("tl:")
    assert outs["tl"]["best"]["text"] == outs["plain"]["best"]["text"]
    assert abs(outs["tl"]["best"]["activation"] - outs["plain"]["best"]["activation"]) < 1e-4

    cfg = DreamConfig(iters=2, n_children=8, min_tokens=3, max_tokens=8, progress=False, n_start_samples=2)
    spec = SweepSpec(
        model="tl:" + tiny_dirs["model"], sae=tiny_dirs["sae"], device="cpu", config=cfg, group_size=2
    )
    o = run_sweep(spec, parse_features("0-2"), tmp_path / "sweep", progress=False)
    assert o.written == 3
    plain = SweepSpec(model=tiny_dirs["model"], sae=tiny_dirs["sae"], device="cpu", config=cfg, group_size=2)
    with pytest.raises(ValueError, match="tl:"):
        run_sweep(plain, parse_features("0-2"), tmp_path / "sweep", resume=True, progress=False)
