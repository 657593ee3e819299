"""Observation and tracing tools on tiny random models: batched == one at a time, hand computations, toys."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.saes import TEXT, identity_sae_dir, write_sae_dir

from featuredream.models.sites import Site, run_sites
from featuredream.objectives.kinds import FunctionObjective, SAEEncoder
from featuredream.observe.activity import (
    differential_features,
    encode_prompts,
    fire_rate,
    format_ranking,
    rank_differential,
    scan,
    top_features,
)
from featuredream.observe.top_examples import Example, corpus_stats, minimal_context, top_examples
from featuredream.observe.tracing import attribution, format_attribution, logit_effects, steer, steering
from featuredream.saes.activations import site_activations
from featuredream.saes.loading import load_sae

PROMPTS = [
    "The quick brown fox jumps over the lazy dog",
    "To be",
    "def parse(text): return json.loads(text)",
    "A",
    "Once upon a time there was a little girl who lived",
    "The capital of France is",
]


@pytest.fixture
def sae_for(tmp_path):
    def make(model, **kw):
        return load_sae(write_sae_dir(tmp_path / f"sae{len(list(tmp_path.iterdir()))}", **kw), model=model)

    return make


def _alone(model, tok, sae, prompt, values):
    """Ground truth: one unpadded forward pass, all positions ``[s, d_sae]``."""
    ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
    x = run_sites(model, [sae.site], input_ids=ids)[0][sae.site][0]
    return sae.pre_activation(x).float() if values == "pre" else sae.sae.encode(x).float()


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("values", ["code", "pre"])
def test_batched_encoding_equals_one_at_a_time(tiny_model, tiny_tokenizer, sae_for, side, values):
    sae = sae_for(tiny_model)
    alone = [_alone(tiny_model, tiny_tokenizer, sae, p, values) for p in PROMPTS]
    kw = dict(values=values, padding_side=side, batch_size=4)  # 2 batches, mixed lengths in each
    last = encode_prompts(tiny_model, tiny_tokenizer, sae, PROMPTS, "last", **kw)
    mx = encode_prompts(tiny_model, tiny_tokenizer, sae, PROMPTS, "max", **kw)
    allv = encode_prompts(tiny_model, tiny_tokenizer, sae, PROMPTS, "all", **kw)
    assert last.shape == (len(PROMPTS), sae.d_sae)
    tol = dict(atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(last, torch.stack([a[-1] for a in alone]), **tol)
    torch.testing.assert_close(mx, torch.stack([a.max(0).values for a in alone]), **tol)
    for got, want in zip(allv, alone):
        torch.testing.assert_close(got, want, **tol)


def test_norm_cap_positions_never_fire(tiny_llama, tiny_tokenizer, tmp_path):
    sae = load_sae(write_sae_dir(tmp_path / "s"), model=tiny_llama)
    ids = torch.tensor([tiny_tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"]])
    norms = site_activations(tiny_llama, sae.site, ids, torch.ones_like(ids, dtype=torch.bool))[0].norm(
        dim=-1
    )
    from featuredream.saes.loading import FeatureStats

    sae.stats = FeatureStats({}, {"norm_cap": float(norms.median())})  # about half the positions are capped
    capped = norms > sae.stats.norm_cap
    pre = encode_prompts(tiny_llama, tiny_tokenizer, sae, PROMPTS[:1], "all", values="pre")[0]
    code = encode_prompts(tiny_llama, tiny_tokenizer, sae, PROMPTS[:1], "all")[0]
    assert capped.any() and torch.isneginf(pre[capped]).all() and torch.isfinite(pre[~capped]).all()
    assert (code[capped] == 0).all()


def test_rank_differential_constructed():
    pos = torch.zeros(4, 6)
    neg = torch.zeros(3, 6)
    pos[:, 5] = torch.tensor([2.0, 2.0, 2.0, 0.0])  # fires on 3/4 positives, never on negatives
    pos[:, 1] = 1.0
    neg[:, 1] = 1.0  # fires everywhere: no difference
    neg[:, 2] = 3.0  # negative-set feature: ranked last
    pos[0, 4] = 0.4  # weak, rare positive feature
    r = rank_differential(pos, neg, n=6)
    assert [x.feature_id for x in r][:2] == [5, 4] and r[-1].feature_id == 2
    top = r[0]
    assert top.score == pytest.approx(1.5) and top.pos_mean == pytest.approx(1.5) and top.neg_mean == 0
    assert top.pos_fire_rate == 0.75 and top.neg_fire_rate == 0
    assert r[-1].score == pytest.approx(-3.0) and r[-1].neg_fire_rate == 1.0
    assert len(rank_differential(pos, neg, n=2)) == 2
    table = format_ranking(r)
    assert "pos_fire" in table.splitlines()[0] and len(table.splitlines()) == 2 + 6


def test_differential_and_top_features_on_model(tiny_llama, tiny_tokenizer, tiny_sae):
    a, b = PROMPTS[:3], PROMPTS[3:]
    same = differential_features(tiny_llama, tiny_tokenizer, tiny_sae, a, a, n=5)
    assert all(x.score == 0 for x in same)
    ab = differential_features(tiny_llama, tiny_tokenizer, tiny_sae, a, b, n=tiny_sae.d_sae)
    ba = {
        x.feature_id: x.score
        for x in differential_features(tiny_llama, tiny_tokenizer, tiny_sae, b, a, n=tiny_sae.d_sae)
    }
    assert all(ba[x.feature_id] == pytest.approx(-x.score, abs=1e-6) for x in ab)
    codes = encode_prompts(tiny_llama, tiny_tokenizer, tiny_sae, [PROMPTS[0]])[0]
    top = top_features(tiny_llama, tiny_tokenizer, tiny_sae, PROMPTS[0], n=50)
    assert 0 < len(top) <= 8  # the tiny SAE is TopK with k = 8
    assert [x.score for x in top] == sorted((x.score for x in top), reverse=True)
    assert all(codes[x.feature_id] == pytest.approx(x.score) for x in top)
    vals = scan(
        tiny_llama, tiny_tokenizer, tiny_sae, PROMPTS, top[0].feature_id, reduce="last", values="code"
    )
    assert vals[0] == pytest.approx(top[0].score)
    rate = fire_rate(tiny_llama, tiny_tokenizer, tiny_sae, PROMPTS, top[0].feature_id)
    assert rate == pytest.approx(float((vals > 0).float().mean())) and rate >= 1 / len(PROMPTS)


def test_corpus_stats_match_brute_force(tiny_llama, tiny_tokenizer, tiny_sae, tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text(TEXT[:400])
    (tmp_path / "docs" / "b.md").write_text(TEXT[400:700])
    ctx, after, k = 24, 3, 3
    st = corpus_stats(
        tiny_llama,
        tiny_tokenizer,
        tiny_sae,
        tmp_path / "docs",
        ctx=ctx,
        k=k,
        batch_size=3,
        after=after,
        progress=False,
    )
    wins = []
    for text in (TEXT[:400], TEXT[400:700]):
        ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
        wins += [ids[i : i + ctx] for i in range(0, len(ids), ctx)]
    pres = [_alone_ids(tiny_llama, tiny_sae, w) for w in wins]  # each [len, d_sae]
    per_win = torch.stack([p.max(0).values for p in pres])  # [n_windows, d_sae]
    torch.testing.assert_close(st.max_activation, per_win.max(0).values, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(st.top_values, per_win.topk(k, dim=0).values.T, atol=1e-5, rtol=1e-5)
    for lat in (0, 7, 77):
        ex = st.examples(lat)
        assert len(ex) == k
        ids, idx, acts, value = ex[0]
        w = int(per_win[:, lat].argmax())
        pos = int(pres[w][:, lat].argmax())
        assert ids == wins[w][: pos + after + 1] and idx == pos  # the whole context from the window start
        torch.testing.assert_close(  # stored float16, capped positions 0
            torch.tensor(acts)[: pos + 1], pres[w][: pos + 1, lat], atol=2e-3, rtol=2e-3
        )
        assert acts[idx] == pytest.approx(value, rel=1e-3, abs=1e-3)  # stored float16, as shipped
    assert top_examples(
        tiny_llama, tiny_tokenizer, tiny_sae, 7, tmp_path / "docs", k=2, ctx=ctx, progress=False
    )[0].value == pytest.approx(float(st.top_values[7, 0]), abs=1e-5)
    assert ((st.fire_rate > 0) & (st.fire_rate <= 1)).any()


def _alone_ids(model, sae, ids):
    x = run_sites(model, [sae.site], input_ids=torch.tensor([ids]))[0][sae.site][0]
    return sae.pre_activation(x).float()


def _corpus(tmp_path):
    (tmp_path / "docs").mkdir(exist_ok=True)
    (tmp_path / "docs" / "a.txt").write_text(TEXT[:400])
    return tmp_path / "docs"


def _windows_of(tok, text, ctx):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return [ids[i : i + ctx] for i in range(0, len(ids), ctx)]


def test_corpus_stats_keep_the_whole_context_by_default(tiny_llama, tiny_tokenizer, tiny_sae, tmp_path):
    """Default ``before``: each example runs from its window's first token; its context scored alone gives
    its value."""
    ctx, after = 16, 3
    st = corpus_stats(
        tiny_llama, tiny_tokenizer, tiny_sae, _corpus(tmp_path), ctx=ctx, k=2, after=after, progress=False
    )
    assert st.top_tokens.shape[-1] == ctx + after
    wins = _windows_of(tiny_tokenizer, TEXT[:400], ctx)
    for lat in (0, 7, 77):
        for ids, idx, acts, value in st.examples(lat):
            w = next(w for w in wins if w[: idx + 1] == ids[: idx + 1])  # starts at a window start
            assert ids == w[: idx + after + 1] and len(acts) == len(ids)
            assert float(_alone_ids(tiny_llama, tiny_sae, ids[: idx + 1])[-1, lat]) == pytest.approx(
                value, abs=1e-4
            )


def _suffix_alone(model, sae, ex, lat):
    """Independent ground truth: the activation of every suffix of the context, one unpadded pass each."""
    ctx = ex.ids[: ex.index + 1]
    return [float(_alone_ids(model, sae, ctx[len(ctx) - n :])[-1, lat]) for n in range(1, len(ctx) + 1)]


def test_minimal_context_of_a_token_feature_is_one_token(tiny_llama, tiny_tokenizer, tmp_path, one_thread):
    """At the embeddings (resid_pre 0) a latent reads the token alone: the minimal context is 1 token."""
    sae = load_sae(identity_sae_dir(tmp_path / "emb", hook="blocks.0.hook_resid_pre"), model=tiny_llama)
    st = corpus_stats(tiny_llama, tiny_tokenizer, sae, _corpus(tmp_path), ctx=16, k=2, progress=False)
    for lat in (3, 40, 100):
        exs = [Example(*e) for e in st.examples(lat)]
        mins = minimal_context(tiny_llama, tiny_tokenizer, sae, lat, exs)
        assert [m.length for m in mins] == [1] * len(exs) and all(m.found for m in mins)
        assert [m.full for m in mins] == [e.index + 1 for e in exs]
        assert [m.value for m in mins] == pytest.approx([e.value for e in exs], abs=1e-5)


def _uniform_attention_model(model, f):
    """Layer 0 attends uniformly to the prefix (zero queries), its MLP adds nothing and no embedding has a
    component ``f``: at resid_post 0, component ``f`` is the mean over the prefix of g(token)."""
    m = copy.deepcopy(model)
    layer = m.model.layers[0]
    layer.self_attn.q_proj.weight.data.zero_()
    layer.mlp.down_proj.weight.data.zero_()
    m.model.embed_tokens.weight.data[:, f] = 0.0
    return m


def test_minimal_context_of_a_context_feature(tiny_llama, tiny_tokenizer, tmp_path, one_thread):
    f = 5
    model = _uniform_attention_model(tiny_llama, f)
    sae = load_sae(identity_sae_dir(tmp_path / "ctx", hook="blocks.0.hook_resid_post"), model=model)
    vocab = torch.arange(len(tiny_tokenizer))[:, None]
    g = run_sites(model, [sae.site], input_ids=vocab)[0][sae.site][:, 0, f]  # [vocab]: one token alone
    a = int(g.argmax())
    neg = torch.where((g < 0) & (g > -g[a] / 8), g, -torch.inf)
    b = int(neg.argmax())
    ga, gb = float(g[a]), float(g[b])
    assert ga > 0 and -ga / 8 < gb < 0  # the toy's premise
    ids = [b, b, a, b, b, a, a]  # context: the first five; a, a after it (ignored)
    value = float(_alone_ids(model, sae, ids[:5])[-1, f])
    assert value == pytest.approx((ga + 4 * gb) / 5, abs=1e-5)  # the construction works as described
    local = [b, b, a]
    exs = [
        Example(ids, 4, [0.0] * len(ids), value),
        Example(local, 2, [0.0] * 3, float(_alone_ids(model, sae, local)[-1, f])),
    ]
    far, near = minimal_context(model, tiny_tokenizer, sae, f, exs, batch_size=3)
    # suffixes b, (b b) are negative; (a b b) averages above the whole context
    assert (far.length, far.full, far.found) == (3, 5, True) and far.start == 2
    assert far.value == pytest.approx((ga + 2 * gb) / 3, abs=1e-5)
    assert (near.length, near.full) == (1, 3) and near.value == pytest.approx(ga, abs=1e-5)
    assert minimal_context(model, tiny_tokenizer, sae, f, exs[:1], keep=1.0)[0].length == 3
    assert minimal_context(model, tiny_tokenizer, sae, f, [], keep=0.5) == []


@pytest.fixture(scope="module")
def context_case(tiny_llama, tiny_tokenizer, tmp_path_factory):
    """A random SAE at layer 1 and its whole-context corpus statistics."""
    root = tmp_path_factory.mktemp("minimal")
    sae = load_sae(write_sae_dir(root / "sae"), model=tiny_llama)
    st = corpus_stats(tiny_llama, tiny_tokenizer, sae, _corpus(root), ctx=16, k=2, progress=False)
    return sae, st


@pytest.mark.parametrize("keep", [0.9, 0.999])  # 0.999: some minimal contexts are 2-3 tokens
def test_minimal_context_keeps_enough_and_no_shorter_one_does(tiny_llama, tiny_tokenizer, context_case, keep):
    sae, st = context_case
    lengths = []
    for lat in st.max_activation.topk(6).indices.tolist():  # positive values: "keeps 90%" is plain
        exs = [Example(*e) for e in st.examples(lat)]
        mins = minimal_context(tiny_llama, tiny_tokenizer, sae, lat, exs, keep, batch_size=5)
        for ex, m in zip(exs, mins):
            alone = _suffix_alone(tiny_llama, sae, ex, lat)  # alone[n - 1]: the last n tokens
            need = keep * ex.value
            assert ex.value > 0 and m.full == len(alone) and alone[-1] == pytest.approx(ex.value, abs=1e-4)
            assert m.found and alone[m.length - 1] >= need - 1e-5, (alone, m)
            assert m.value == pytest.approx(alone[m.length - 1], abs=1e-5)
            assert all(v < need + 1e-5 for v in alone[: m.length - 1]), (alone, m)
            lengths.append(m.length)
    assert len(lengths) >= 6 and (keep < 0.99 or max(lengths) > 1)


def test_minimal_context_under_a_norm_cap_and_bad_keep(tiny_llama, tiny_tokenizer, context_case):
    """A norm cap that drops every position: no suffix keeps anything, the whole context is reported."""
    from featuredream.saes.loading import FeatureStats

    sae, st = context_case
    capped = copy.copy(sae)
    capped.stats = FeatureStats({}, {"norm_cap": 0.0})
    exs = [Example(*e) for e in st.examples(7)]
    mins = minimal_context(tiny_llama, tiny_tokenizer, capped, 7, exs)
    assert exs and [(m.length, m.found) for m in mins] == [(e.index + 1, False) for e in exs]
    assert all(m.value == -float("inf") and m.start == 0 for m in mins)
    for keep in (0, 1.5, True, "0.9"):
        with pytest.raises(ValueError, match="keep="):
            minimal_context(tiny_llama, tiny_tokenizer, sae, 7, exs, keep=keep)
    with pytest.raises(ValueError, match="outside"):
        minimal_context(tiny_llama, tiny_tokenizer, sae, 7, [Example([1, 2], 2, [0.0, 0.0], 1.0)])


@pytest.mark.parametrize("kind", ["llama", "gemma2"])
def test_logit_effects_equal_hand_computation(kind, tiny_llama, tiny_gemma, tiny_tokenizer, sae_for):
    model = copy.deepcopy(tiny_llama if kind == "llama" else tiny_gemma)
    g = torch.Generator().manual_seed(1)
    model.model.norm.weight.data = torch.rand(64, generator=g) + 0.5
    sae = sae_for(model)
    d = sae.sae.W_dec[9] / sae.sae.W_dec[9].norm()
    gain = model.model.norm.weight if kind == "llama" else 1 + model.model.norm.weight  # Gemma stores w - 1
    want = model.lm_head.weight @ (gain * d)
    le = logit_effects(model, tiny_tokenizer, sae, 9, n=5)
    torch.testing.assert_close(le.values, want[: len(tiny_tokenizer)], atol=1e-5, rtol=1e-4)
    assert [t.token_id for t in le.top] == want.topk(5).indices.tolist()
    assert [t.token_id for t in le.bottom] == (-want).topk(5).indices.tolist()
    assert le.top[0].token == tiny_tokenizer.decode([le.top[0].token_id])


def test_logit_effects_reject_query_site(tiny_llama, tiny_tokenizer, sae_for):
    sae = sae_for(tiny_llama, d_in=16, hook="blocks.1.attn.hook_q", head=2)
    with pytest.raises(ValueError, match="residual stream"):
        logit_effects(tiny_llama, tiny_tokenizer, sae, 0)


@pytest.mark.parametrize("method", ["grad_x_input", "integrated_gradients"])
def test_attribution_on_linear_toy(tiny_llama, tiny_tokenizer, method):
    """Objective = sum over tokens of x_j . w at the embeddings: attribution_j must be exactly x_j . w."""
    site = Site("resid_pre", 0)
    w = torch.randn(64, generator=torch.Generator().manual_seed(0))
    obj = FunctionObjective(lambda acts: (acts[site] @ w).cumsum(1), [site], reduce="last")
    prompt = PROMPTS[0]
    a = attribution(tiny_llama, tiny_tokenizer, obj, prompt, method=method, steps=8)
    ids = tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    x = tiny_llama.get_input_embeddings().weight[ids]
    want = x @ w
    torch.testing.assert_close(a.scores, want, atol=1e-5, rtol=1e-4)
    assert torch.equal(a.scores > 0, want > 0) and (a.scores > 0).any() and (a.scores < 0).any()
    assert float(a.scores.sum()) == pytest.approx(a.target, abs=1e-4)
    # the value at position 3 depends on tokens 0..3 only
    a3 = attribution(tiny_llama, tiny_tokenizer, obj, prompt, position=3, method=method, steps=8)
    torch.testing.assert_close(a3.scores[:4], want[:4], atol=1e-5, rtol=1e-4)
    assert (a3.scores[4:] == 0).all() and "target" in format_attribution(a3)


def test_attribution_is_causal_on_a_real_objective(tiny_gemma, tiny_tokenizer, sae_for):
    sae = sae_for(tiny_gemma)
    a = attribution(tiny_gemma, tiny_tokenizer, SAEEncoder(sae, 5), PROMPTS[0], position=4)
    assert (a.scores[5:] == 0).all() and a.scores[:5].abs().sum() > 0
    with pytest.raises(ValueError, match="position 99"):
        attribution(tiny_gemma, tiny_tokenizer, SAEEncoder(sae, 5), PROMPTS[0], position=99)


def test_steering_alpha_zero_is_plain_generation(tiny_model, tiny_tokenizer, sae_for):
    sae = sae_for(tiny_model)
    ids = torch.tensor([tiny_tokenizer("The quick brown", add_special_tokens=False)["input_ids"]])
    plain = tiny_model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=12,
        pad_token_id=tiny_tokenizer.pad_token_id,
    )[0, ids.shape[1] :].tolist()
    layer = tiny_model.model.layers[1]
    before = _hooks(layer)  # transformers installs its own output-capturing hooks once per model
    out = steering(
        tiny_model, tiny_tokenizer, sae, 4, "The quick brown", alphas=(0.0, 50.0), max_new_tokens=12
    )
    assert out[0].alpha == 0 and out[0].ids == plain
    assert out[1].ids != plain  # a large push changes the continuation
    assert _hooks(layer) == before  # ours removed


def _hooks(module) -> tuple[list, list]:
    return list(module._forward_hooks), list(module._forward_pre_hooks)


def test_steer_hook_adds_exactly_alpha_direction(tiny_llama, tiny_tokenizer, tiny_sae):
    ids = torch.tensor([tiny_tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"]])
    d = tiny_sae.decoder_direction(3)
    site = tiny_sae.site  # resid_post of layer 1
    base = run_sites(tiny_llama, [site], input_ids=ids)[0][site]
    before = _hooks(tiny_llama.model.layers[1])
    with steer(tiny_llama, site, 2.5 * d):
        got = run_sites(tiny_llama, [site], input_ids=ids)[0][site]
        _, logits_post = run_sites(tiny_llama, [site], input_ids=ids, logits=True)
    torch.testing.assert_close(got - base, (2.5 * d).expand_as(base), atol=1e-5, rtol=1e-5)
    with steer(tiny_llama, Site("resid_pre", 2), 2.5 * d):  # the same tensor, seen from the next layer
        _, logits_pre = run_sites(tiny_llama, [site], input_ids=ids, logits=True)
    torch.testing.assert_close(logits_pre, logits_post)
    with pytest.raises(RuntimeError), steer(tiny_llama, site, d):
        raise RuntimeError("boom")
    assert _hooks(tiny_llama.model.layers[1]) == before


def test_bad_input_gives_one_line_errors(tiny_llama, tiny_tokenizer, tiny_sae, tmp_path):
    cases = [
        (lambda: encode_prompts(tiny_llama, tiny_tokenizer, tiny_sae, []), "empty"),
        (lambda: encode_prompts(tiny_llama, tiny_tokenizer, tiny_sae, "just one string"), "single string"),
        (lambda: encode_prompts(tiny_llama, tiny_tokenizer, tiny_sae, PROMPTS, "median"), "'median'"),
        (
            lambda: differential_features(tiny_llama, tiny_tokenizer, tiny_sae, PROMPTS, []),
            "negative prompts",
        ),
        (lambda: scan(tiny_llama, tiny_tokenizer, tiny_sae, PROMPTS, 128), "latent 128 out of range"),
        (lambda: steering(tiny_llama, tiny_tokenizer, tiny_sae, -1, "Hi"), "latent -1"),
        (lambda: logit_effects(tiny_llama, tiny_tokenizer, tiny_sae, "x"), "'x' is not an integer"),
        (lambda: corpus_stats(tiny_llama, tiny_tokenizer, tiny_sae, tmp_path / "nope.txt"), "nope.txt"),
        (lambda: top_examples(tiny_llama, tiny_tokenizer, tiny_sae, 3), "ships no dataset examples"),
        (lambda: steering(tiny_llama, tiny_tokenizer, tiny_sae, 3, "Hi", alphas=()), "alphas is empty"),
    ]
    (tmp_path / "blob.txt").write_bytes(b"\x00\x01binary\x00")
    cases.append(
        (lambda: corpus_stats(tiny_llama, tiny_tokenizer, tiny_sae, tmp_path / "blob.txt"), "blob.txt")
    )
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    cases.append(
        (lambda: corpus_stats(tiny_llama, tiny_tokenizer, tiny_sae, [tmp_path / "latin1.txt"]), "not UTF-8")
    )
    for fn, needle in cases:
        with pytest.raises(ValueError) as e:
            fn()
        assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


# ---------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def cli_dirs(tmp_path_factory, tiny_llama, tiny_tokenizer):
    root = tmp_path_factory.mktemp("cli_inspect")
    tiny_llama.save_pretrained(root / "model")
    tiny_tokenizer.save_pretrained(root / "model")
    (root / "corpus.txt").write_text(TEXT)
    return {
        "root": root,
        "base": ["--model", str(root / "model"), "--sae", str(identity_sae_dir(root / "sae"))],
    }


def _cli(capsys, args):
    from featuredream.cli.main import main

    code = main(args)
    return code, capsys.readouterr()


def test_cli_inspect_actions(cli_dirs, capsys):
    b, corpus = cli_dirs["base"], str(cli_dirs["root"] / "corpus.txt")
    runs = {
        "top-features": ["inspect", "top-features", "The quick brown fox", "-n", "3", *b],
        "diff": [
            "inspect",
            "diff",
            "--pos",
            "The quick brown fox",
            "To be",
            "--neg",
            "def parse(text):",
            "-n",
            "4",
            *b,
        ],
        "scan": ["inspect", "scan", "--feature", "3", "The quick", "To be", *b],
        "examples": [
            "inspect",
            "examples",
            "--feature",
            "3",
            "--corpus",
            corpus,
            "--ctx",
            "16",
            "-k",
            "2",
            *b,
        ],
        "logits": ["inspect", "logits", "--feature", "3", "-n", "3", *b],
        "attribution": [
            "inspect",
            "attribution",
            "--feature",
            "3",
            "The quick brown fox",
            "--reduce",
            "max",
            *b,
        ],
        "steer": [
            "inspect",
            "steer",
            "--feature",
            "3",
            "The quick",
            "--alphas",
            "0,20",
            "--max-new-tokens",
            "3",
            *b,
        ],
    }
    expect = {
        "top-features": "activation",
        "diff": "pos_fire",
        "scan": "fire rate",
        "examples": "\u27e6",
        "logits": "promoted",
        "attribution": "target",
        "steer": "alpha    20.00",
    }
    for name, args in runs.items():
        code, cap = _cli(capsys, args)
        assert code == 0, (name, cap.err)
        assert expect[name] in cap.out, (name, cap.out)


def test_cli_inspect_bad_input_is_one_line(cli_dirs, capsys):
    b, root = cli_dirs["base"], cli_dirs["root"]
    (root / "bin.txt").write_bytes(b"\x00\x00\xff")
    cases = [
        (["inspect", "scan", "--feature", "999", "The quick", *b], "999"),
        (["inspect", "examples", "--feature", "3", "--corpus", str(root / "missing.txt"), *b], "missing.txt"),
        (["inspect", "examples", "--feature", "3", "--corpus", str(root / "bin.txt"), *b], "bin.txt"),
        (["inspect", "examples", "--feature", "3", *b], "ships no dataset examples"),
        (["inspect", "diff", "--pos", "The quick", *b], "negative prompts is empty"),
        (["inspect", "scan", "--feature", "3", *b], "prompts is empty"),
        (["inspect", "logits", "--feature", "x", *b], "'x' is not an integer"),
        (["inspect", "steer", "--feature", "3", "Hi", "--alphas", "a,b", *b], "invalid list"),
        (["inspect", "frobnicate", *b], "invalid choice"),
    ]
    for args, needle in cases:
        code, cap = _cli(capsys, args)
        assert code == 2, (args, cap)
        assert needle in cap.err and len(cap.err.strip().splitlines()) == 1, (args, cap.err)


def test_cli_examples_print_the_minimal_context(cli_dirs, capsys, tiny_llama, tiny_tokenizer):
    root, corpus = cli_dirs["root"], str(cli_dirs["root"] / "corpus.txt")
    args = ["inspect", "examples", "--feature", "3", "--corpus", corpus, "--ctx", "16", "-k", "3"]
    code, cap = _cli(capsys, [*args, *cli_dirs["base"]])
    assert code == 0, cap.err
    head, *rows = cap.out.splitlines()  # rows: value (10), 2 spaces, min/full (7), 2 spaces, text
    assert "in context" in head and "whole window" in head and ">= 90%" in head
    sae = load_sae(root / "sae", model=tiny_llama)
    exs = top_examples(tiny_llama, tiny_tokenizer, sae, 3, corpus, k=3, ctx=16, progress=False)
    mins = minimal_context(tiny_llama, tiny_tokenizer, sae, 3, exs)
    assert len(rows) == len(exs) == 3
    for row, e, m in zip(rows, exs, mins):
        value, lengths, text = row[:10], row[12:19].strip(), row[21:]
        assert float(value) == pytest.approx(e.value, abs=1e-3) and lengths == f"{m.length}/{m.full}"
        toks = [tiny_tokenizer.decode([i]) for i in e.ids]
        shown = "".join(toks[m.start :]).replace("\n", "\u21b5")
        assert text.replace("\u27e6", "").replace("\u27e7", "") == ("\u2026" if m.start else "") + shown
    code, cap = _cli(capsys, [*args, "--full", "--keep", "0.999", *cli_dirs["base"]])
    assert code == 0 and ">= 99.9%" in cap.out.splitlines()[0]
    mins = minimal_context(tiny_llama, tiny_tokenizer, sae, 3, exs, keep=0.999)
    for row, e, m in zip(cap.out.splitlines()[1:], exs, mins):
        text = row[21:]
        whole = "".join(tiny_tokenizer.decode([i]) for i in e.ids).replace("\n", "\u21b5")
        assert text.replace("\u27e6", "").replace("\u27e7", "").replace("\u2502", "") == whole
        assert ("\u2502" in text) == (m.start > 0)
    code, cap = _cli(capsys, [*args, "--keep", "2", *cli_dirs["base"]])
    assert code == 2 and "keep=2.0" in cap.err


def test_default_steering_strengths_have_one_fallback(tiny_llama, tiny_tokenizer, tiny_sae):
    """The card, ``inspect steer`` and ``steering()`` share one default: 0, 2, 4, 8 x the dataset maximum,
    x 1 without a positive one."""
    from featuredream.observe.tracing import STEER_SCALES, default_alphas

    assert default_alphas(10.0) == (0.0, 20.0, 40.0, 80.0)
    assert default_alphas(None) == default_alphas(0.0) == default_alphas(-3.0) == STEER_SCALES
    out = steering(tiny_llama, tiny_tokenizer, tiny_sae, 3, "Hi", max_new_tokens=2)  # no stats: x 1
    assert [s.alpha for s in out] == list(STEER_SCALES)
