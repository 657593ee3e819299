"""The SAE recipe on a tiny model and a tiny corpus: training lowers the reconstruction loss, and the
directory it writes is read back by ``load_sae`` with the same weights and site, and reproduces the numbers
it records (held-out FVU, top examples) when they are recomputed here by hand."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.by_hand import encoder_pre
from helpers.corpus import tiny_corpus

from featuredream import Site, load_sae
from featuredream.models.sites import parse_hook_name
from featuredream.saes.training import TopKTrainer, TrainConfig, captured, save_sae_lens_dir, train_sae
from featuredream.text.corpus import windows_digest

CFG = TrainConfig(
    site="blocks.1.hook_resid_post",
    d_sae=32,
    k=8,
    ctx=16,
    train_tokens=10**6,  # more than the corpus: every window is used (the held-out set too)
    val_tokens=10**6,
    epochs=10,
    batch=64,
    lr=1e-2,
    aux_k=8,
    dead_tokens=2000,
    top_k_examples=3,
    example_after=2,
    forward_batch=16,
)


def _windows(tok, docs, held_out: bool) -> torch.Tensor:
    """Non-overlapping ``ctx``-token windows of the held-out documents (every 10th, from the 4th) or the rest."""
    out = []
    for d, text in enumerate(docs):
        if (d % 10 == 3) == held_out:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            out += [ids[i : i + CFG.ctx] for i in range(0, len(ids) - CFG.ctx + 1, CFG.ctx)]
    return torch.tensor(out)


@torch.no_grad()
def _resid_post_1(model, windows):
    return model(input_ids=windows, output_hidden_states=True).hidden_states[2].reshape(-1, 64).float()


def _topk_recon(W_enc, b_enc, W_dec, b_dec, x, k):
    """TopK SAE by hand: keep the k largest pre-activations (ReLU'd), decode, add b_dec."""
    pre = (x - b_dec) @ W_enc + b_enc
    vals, idx = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, idx, vals.relu()) @ W_dec + b_dec


def _fvu(x, recon):
    return float((x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def test_trainer_lowers_the_loss_and_its_directory_loads_back(
    tiny_llama, tiny_tokenizer, tmp_path, one_thread
):
    x = _resid_post_1(tiny_llama, _windows(tiny_tokenizer, tiny_corpus(), held_out=False))
    gen = torch.Generator().manual_seed(0)
    trainer = TopKTrainer(64, CFG, x.mean(0), gen)
    with torch.no_grad():
        before = _fvu(x, trainer.reconstruct(x))
    losses = trainer.train(x, gen)
    assert len(losses) == CFG.epochs * (len(x) // CFG.batch)
    assert losses[-1] < 0.5 * losses[0] and before > 0.9  # from ~1 (decodes ~the mean) to well below
    with torch.no_grad():
        after = _fvu(x, trainer.reconstruct(x))
    assert after < 0.5 * before
    site = Site("resid_post", 1)
    save_sae_lens_dir(trainer, tmp_path / "sae", model_name="tiny", site=site, cfg=CFG)
    sae = load_sae(tmp_path / "sae", model=tiny_llama)
    assert sae.site == site and sae.d_sae == CFG.d_sae and sae.d_in == 64
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):  # written in 16 bits, read back exactly
        torch.testing.assert_close(
            getattr(sae.sae, name).float(), getattr(trainer, name).detach().half().float(), atol=0, rtol=0
        )
    # sae-lens reads it as the TopK SAE it is: its own encode/decode equals the hand-written TopK
    w = [getattr(sae.sae, n).float() for n in ("W_enc", "b_enc", "W_dec", "b_dec")]
    torch.testing.assert_close(sae.reconstruct(x).float(), _topk_recon(*w, x, CFG.k), atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_llama, tiny_tokenizer):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("train") / "sae"
        docs = tiny_corpus()
        stats = train_sae(tiny_llama, tiny_tokenizer, docs, CFG, out, model_name="tiny")
    finally:
        torch.set_num_threads(n)
    return out, stats, docs


def test_train_sae_writes_an_sae_that_reproduces_its_recorded_numbers(trained, tiny_llama, tiny_tokenizer):
    out, stats, docs = trained
    assert json.loads((out / "stats.json").read_text()) == stats
    sae = load_sae(out, model=tiny_llama)
    assert sae.site == Site("resid_post", 1) and sae.d_sae == CFG.d_sae
    assert sae.context_size == CFG.ctx and sae.stats.info["fvu_heldout"] == stats["fvu_heldout"]
    assert stats["train_config"]["d_sae"] == CFG.d_sae and stats["site"] == "blocks.1.hook_resid_post"
    # held-out FVU, recomputed from the shipped weights on the held-out documents' windows by hand
    xv = _resid_post_1(tiny_llama, _windows(tiny_tokenizer, docs, held_out=True))
    xv = xv[xv.norm(dim=-1) <= stats["norm_cap"]]
    w = [getattr(sae.sae, n).float() for n in ("W_enc", "b_enc", "W_dec", "b_dec")]
    fvu = _fvu(xv, _topk_recon(*w, xv, CFG.k))
    assert stats["fvu_heldout"] == pytest.approx(fvu, rel=1e-5) and fvu < 0.5  # an untrained SAE: ~1
    assert stats["final_loss"] < 0.5
    # top examples: each latent's best context, scored alone by hand with the shipped weights
    st = sae.stats
    assert st.has_xe_table() and st.top_values.shape == (CFG.d_sae, CFG.top_k_examples)
    for lat in range(0, CFG.d_sae, 5):
        toks, pos, _, value = st.examples(lat)[0]
        with torch.no_grad():
            x = tiny_llama(
                input_ids=torch.tensor([toks[: pos + 1]]), output_hidden_states=True
            ).hidden_states[2]
        assert float(encoder_pre(sae, x[0, -1].float(), lat)) == pytest.approx(
            value, rel=2e-5, abs=1e-6
        )  # computed with the weights exactly as shipped (16-bit)
        assert float(st.max_activation[lat]) == pytest.approx(value)


def _random_windows(n=12, ctx=16, vocab=300, seed=0):
    return torch.randint(1, vocab, (n, ctx), generator=torch.Generator().manual_seed(seed))


def _hidden(model, ids, layer=1):
    """resid_post of decoder layer ``layer``, written here without featuredream: hidden_states[layer + 1]."""
    return model(input_ids=ids, output_hidden_states=True).hidden_states[layer + 1]


def test_activation_cache_from_other_windows_is_refused(tmp_path, tiny_llama, one_thread):
    cfg = TrainConfig(site="blocks.1.hook_resid_post", ctx=16, forward_batch=4)
    site = parse_hook_name(cfg.site)
    cache = str(tmp_path / "acts.safetensors")
    a, b = _random_windows(6), _random_windows(2, seed=1)
    train_a, val_a = captured(tiny_llama, a, b, site, cfg, cache)
    again, _ = captured(tiny_llama, a, b, site, cfg, cache)  # same windows: read back
    assert torch.equal(train_a, again)
    with torch.no_grad():
        assert torch.allclose(train_a, _hidden(tiny_llama, a), atol=1e-5)
    with pytest.raises(ValueError, match="captured from other windows"):
        captured(tiny_llama, _random_windows(6, seed=2), b, site, cfg, cache)
    assert windows_digest(a) != windows_digest(_random_windows(6, seed=2))
