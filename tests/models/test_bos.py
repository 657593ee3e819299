"""A model whose tokenizer prepends BOS runs on ``[bos] + tokens`` everywhere (lm/bos.py), checked against a
plain forward of the inner model on ``[bos] + ids`` written out here.

The tiny Gemma-3 (conftest: sliding window 4, scaled embeddings) with a tokenizer of the same vocabulary
whose post-processor prepends ``<bos>`` (id 1, not the pad / EOS id 0): the evaluator (right-padded, no
mask) and the reference path, the GCG pass (one BOS embedding scaled as the module scales it), padded site
reads (a left-padded row's BOS right before its first token, so the window sees the same distances),
generation and model samples, and a seeded dream reproduced from ``tok(text)``. A tokenizer without BOS
(SmolLM2's kind) is not wrapped.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers.saes import TEXT

from featuredream.engine.config import DreamConfig
from featuredream.engine.dream import dream
from featuredream.engine.starts import model_samples
from featuredream.evaluation.evaluate import Evaluator, reference_evaluate
from featuredream.evaluation.parent_grads import batched_parent_signals, parent_signals
from featuredream.models.bos import BosModel, prepends_bos, with_bos
from featuredream.models.loading import decoder_layers
from featuredream.models.padding import pad
from featuredream.models.sites import Site
from featuredream.models.tl import as_model
from featuredream.objectives.kinds import DirectionObjective
from featuredream.observe.tracing import final_norm
from featuredream.saes.activations import site_activations

TOL = dict(atol=1e-4, rtol=1e-4)
LAYER = 1
SITE = Site("resid_post", LAYER)
BOS = 1
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Once upon a time there", "To be, or not"]


def _tokenizer(template: bool):
    """The tiny BPE with ``<bos>`` = id 1 (same vocabulary size as the tiny models); ``template``: its
    post-processor prepends ``<bos>`` (Gemma's default), otherwise it never adds it (SmolLM2's kind)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<bos>"]
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tk.train_from_iterator([TEXT], trainer)
    if template:
        tk.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", BOS)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<bos>", eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


@pytest.fixture(scope="module")
def bos_tok(tiny_gemma3):
    tok = _tokenizer(template=True)
    assert len(tok) == tiny_gemma3.config.vocab_size and tok.bos_token_id == BOS
    assert tok("Hello")["input_ids"][0] == BOS != tok("Hello", add_special_tokens=False)["input_ids"][0]
    return tok


@pytest.fixture(scope="module")
def wrapped(tiny_gemma3, bos_tok):
    return with_bos(tiny_gemma3, bos_tok)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


def _direction(d_model: int, seed: int = 0) -> torch.Tensor:
    d = torch.randn(d_model, generator=torch.Generator().manual_seed(seed))
    return d / d.norm()


def _seqs(lengths, seed: int = 0, vocab: int = 320) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, vocab, (n,), generator=g) for n in lengths]


@torch.no_grad()
def _plain(inner, ids: torch.Tensor, d: torch.Tensor, reduce: str = "last"):
    """Score, XE and per-token values of ``ids [L]`` by a plain forward of ``[bos] + ids`` on the inner model
    (values and XE over the real positions: the BOS's own output dropped)."""
    full = torch.cat([torch.tensor([BOS]), ids])
    out = inner(input_ids=full[None], output_hidden_states=True, use_cache=False)
    vals = out.hidden_states[LAYER + 1][0, 1:].float() @ d
    score = {"last": vals[-1], "max": vals.max(), "mean": vals.mean()}[reduce]
    xe = F.cross_entropy(out.logits[0, 1:-1].float(), ids[1:]) if len(ids) > 1 else torch.tensor(0.0)
    return float(score), float(xe), vals


# ---------------------------------------------------------------------------------------------- wrapping


def test_wrapped_once_only_when_the_tokenizer_prepends_bos(tiny_gemma3, bos_tok, wrapped, tmp_path):
    from featuredream.models.loading import load_model

    assert isinstance(wrapped, BosModel) and wrapped.inner is tiny_gemma3 and wrapped.bos_token_id == BOS
    assert with_bos(wrapped, bos_tok) is wrapped and as_model(wrapped, bos_tok) is wrapped
    assert as_model(tiny_gemma3) is tiny_gemma3  # no tokenizer: nothing to decide
    plain_tok = _tokenizer(template=False)  # a BOS token it never adds by default (SmolLM2's kind)
    assert plain_tok.bos_token_id == BOS and not prepends_bos(plain_tok)
    assert with_bos(tiny_gemma3, plain_tok) is tiny_gemma3
    # the inner model's tree, weights and names, seen through the wrapper
    assert decoder_layers(wrapped) is decoder_layers(tiny_gemma3)
    assert final_norm(wrapped) is final_norm(tiny_gemma3)
    assert wrapped.get_input_embeddings() is tiny_gemma3.get_input_embeddings()
    assert wrapped.config is tiny_gemma3.config and wrapped.name_or_path_ == "tiny-gemma3"
    assert {id(p) for p in wrapped.parameters()} == {id(p) for p in tiny_gemma3.parameters()}
    obj = DirectionObjective(SITE, _direction(64))
    assert Evaluator(tiny_gemma3, obj, prefix_cache=True).prefix_cache
    assert not Evaluator(wrapped, obj, prefix_cache=True).prefix_cache  # hf_kv_cache = False
    # load_model wraps by the tokenizer it loads
    for name, tok in (("bos", bos_tok), ("plain", plain_tok)):
        tiny_gemma3.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
        model, _ = load_model(str(tmp_path / name), device="cpu")
        assert isinstance(model, BosModel) == (name == "bos")


def test_smollm2_tokenizer_prepends_no_bos():
    """The default model's tokenizer (from the cache; skipped when absent) is never wrapped."""
    from transformers import AutoTokenizer

    from featuredream.models.loading import cache_dir

    path = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if not (path / "tokenizer.json").exists():
        pytest.skip(f"SmolLM2 is not converted in {cache_dir()}")
    tok = AutoTokenizer.from_pretrained(path)
    assert tok("Hello world")["input_ids"] == [19556, 905] and not prepends_bos(tok)


# ---------------------------------------------------------------------------------------------- scoring


@pytest.mark.parametrize("reduce", ["last", "mean"])
def test_evaluator_and_reference_equal_a_plain_bos_forward(tiny_gemma3, bos_tok, wrapped, reduce):
    """Right-padded ragged rows without a mask (the evaluator) and one string at a time (the reference path,
    given the raw model and the tokenizer): each row's score, XE and per-token values are a plain forward of
    ``[bos] + ids``'s real positions; and differ from the BOS-less ones."""
    d = _direction(64, 3)
    obj = DirectionObjective(SITE, d, reduce)
    seqs = _seqs((13, 6, 9, 2), seed=4)
    ids, mask = pad(seqs, 0)
    lengths = mask.sum(1)
    out = Evaluator(wrapped, obj, batch_size=8)(ids, lengths)
    for i, s in enumerate(seqs):
        score, xe, vals = _plain(tiny_gemma3, s, d, reduce)
        assert float(out.scores[i]) == pytest.approx(score, abs=1e-4)
        assert float(out.xe[i]) == pytest.approx(xe, abs=1e-4)
        torch.testing.assert_close(out.token_acts[i, : len(s)], vals, **TOL)
    bare = Evaluator(tiny_gemma3, obj, batch_size=8)(ids, lengths)
    assert float((bare.scores - out.scores).abs().max()) > 1e-2  # the BOS matters

    ref = reference_evaluate(tiny_gemma3, bos_tok, obj, TEXTS)
    for i, text in enumerate(TEXTS):
        s = torch.tensor(bos_tok(text, add_special_tokens=False)["input_ids"])
        score, xe, vals = _plain(tiny_gemma3, s, d, reduce)
        assert float(ref.scores[i]) == pytest.approx(score, abs=1e-4)
        assert float(ref.xe[i]) == pytest.approx(xe, abs=1e-4)
        torch.testing.assert_close(ref.token_acts[i, : len(s)], vals, **TOL)


def test_gcg_signals_equal_autograd_through_the_inner_model(tiny_gemma3, wrapped):
    """The one-hot gradient, score, XE and next-token log-probabilities of the GCG pass equal autograd through
    the inner model fed ``[emb(bos), one_hot @ W_E * scale]``: the BOS embedding is the module's own output."""
    model, V = tiny_gemma3, tiny_gemma3.config.vocab_size
    ids = _seqs((11,), seed=6)[0]
    d, w = _direction(64, 1), 0.7
    sig = parent_signals(wrapped, DirectionObjective(SITE, d, "mean"), ids, w)

    emb = model.get_input_embeddings()
    one_hot = F.one_hot(ids, V).float().requires_grad_(True)
    with torch.enable_grad():
        embeds = torch.cat([emb(torch.tensor([BOS])), (one_hot @ emb.weight) * emb.embed_scale])
        out = model(inputs_embeds=embeds[None], output_hidden_states=True, use_cache=False)
        logits = out.logits[0, 1:]
        score = (out.hidden_states[LAYER + 1][0, 1:] @ d).mean()
        xe = F.cross_entropy(logits[:-1], ids[1:])
        (-score + w * xe).backward()
    assert sig.score == pytest.approx(float(score), abs=1e-4) and sig.xe == pytest.approx(float(xe), abs=1e-4)
    torch.testing.assert_close(sig.grad, one_hot.grad, **TOL)
    torch.testing.assert_close(sig.logprobs, torch.log_softmax(logits.detach(), -1), **TOL)
    assert float(sig.grad.abs().max()) > 1e-3

    parents = _seqs((12, 5, 8), seed=7)  # ragged parents in one pass: each its own
    together = batched_parent_signals(wrapped, _single(d), parents, [0, 0, 0], [0.5] * 3)
    for p, got in zip(parents, together):
        alone = parent_signals(wrapped, DirectionObjective(SITE, d, "max"), p, 0.5)
        assert got.score == pytest.approx(alone.score, abs=1e-4)
        torch.testing.assert_close(got.grad, alone.grad, **TOL)


def _single(d):
    from featuredream.objectives.group import Single

    return Single(DirectionObjective(SITE, d, "max"))


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_site_activations_equal_each_sequence_alone(tiny_gemma3, wrapped, side):
    """The dataset / statistics read (mask, positions from the mask): rows longer than the window, padded on
    either side, equal an unpadded forward of ``[bos] + ids`` (BOS dropped)."""
    seqs = _seqs((13, 5, 11, 7), seed=11)
    ids, mask = pad([s.tolist() for s in seqs], 0, side)
    x = site_activations(wrapped, SITE, ids, mask)
    assert x.shape[:2] == ids.shape
    for i, s in enumerate(seqs):
        with torch.no_grad():
            full = torch.cat([torch.tensor([BOS]), s])[None]
            want = tiny_gemma3(input_ids=full, output_hidden_states=True).hidden_states[LAYER + 1][0, 1:]
        torch.testing.assert_close(x[i][mask[i]], want, **TOL)


# ---------------------------------------------------------------------------------------------- generation


def test_generate_and_model_samples_carry_no_bos(tiny_gemma3, bos_tok, wrapped):
    ids = torch.tensor([bos_tok(TEXTS[1], add_special_tokens=False)["input_ids"]])
    kw = dict(do_sample=False, max_new_tokens=6, min_new_tokens=6, pad_token_id=0)
    got = wrapped.generate(ids, attention_mask=torch.ones_like(ids), **kw)
    full = torch.cat([torch.tensor([[BOS]]), ids], 1)
    assert torch.equal(got, tiny_gemma3.generate(full, attention_mask=torch.ones_like(full), **kw)[:, 1:])
    assert torch.equal(got[:, : ids.shape[1]], ids)

    samples = model_samples(wrapped, bos_tok, 3, 8, seed=2)
    assert len(samples) == 3 and all(len(s) == 8 and BOS not in s for s in samples)
    assert samples != model_samples(tiny_gemma3, bos_tok, 3, 8, seed=2)  # sampled after the BOS


# ---------------------------------------------------------------------------------------------- dream


def test_seeded_dream_is_reproduced_by_tok_text(tiny_gemma3, bos_tok):
    """A dream given the raw model and the BOS tokenizer runs on ``[bos] + tokens``: the reported activation
    and XE (re-scored from the text) and the loop's own scores of that prompt are a plain forward of
    ``tok(text)`` (the tokenizer's own BOS) on the inner model."""
    d = _direction(64, 5)
    cfg = DreamConfig(
        iters=4, n_children=16, min_tokens=3, max_tokens=10, progress=False, n_start_samples=2,
        gcg_topk=16, seed=3, init_prompt="The quick brown fox", start="auto",
    )  # fmt: skip
    res = dream(tiny_gemma3, bos_tok, DirectionObjective(SITE, d, "last"), cfg)
    full = torch.tensor(bos_tok(res.best.text)["input_ids"])
    assert full[0] == BOS
    score, xe, _ = _plain(tiny_gemma3, full[1:], d, "last")
    assert res.best.activation == pytest.approx(score, abs=1e-4)
    assert res.best.xe == pytest.approx(xe, abs=1e-4)
    # the loop's own (fast) score was on the wrapped model too, not only the re-scoring
    assert res.verification.fast_activation == pytest.approx(score, abs=1e-4)
