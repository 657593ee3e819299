"""Shared fixtures: tiny random models built from configs, a tiny BPE tokenizer, a random sae-lens SAE."""

from __future__ import annotations

import os

import pytest
import torch
from helpers.saes import GEMMA3_WINDOW, TEXT, identity_sae_dir, write_sae_dir

torch.set_num_threads(min(2, os.cpu_count() or 1))
# The CLI's fluency judge (Gemma 3 270M) is off in tests unless a test asks for one: tiny models need no
# second opinion, and a fresh machine would fetch Gemma for each CLI test (tests/cli/test_cli.py covers
# the option).
os.environ["FEATUREDREAM_JUDGE"] = "none"


def pytest_addoption(parser):
    parser.addoption(
        "--release", action="store_true", help="also run the release checks (marker 'release': ~10 min)"
    )


def pytest_collection_modifyitems(config, items):
    """Release checks (the full recompute of the shipped statistics) run only with ``--release``: the
    suite's cheaper checks fail on the same breaks (tests/saes/test_release.py says which)."""
    if config.getoption("--release"):
        return
    skip = pytest.mark.skip(reason="a release check: run with --release")
    for item in items:
        if "release" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def one_thread():
    """Tiny matmuls: one thread is ~100x faster than two when other jobs share the CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE tokenizer (vocab ~320) trained in memory: no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tk.train_from_iterator([TEXT], trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    return tok


"""The tiny Gemma-3's sliding window: shorter than the prompts its tests use."""


def _tiny(kind: str, vocab: int):
    from transformers import AutoModelForCausalLM, Gemma2Config, Gemma3TextConfig, LlamaConfig

    torch.manual_seed(0)
    common = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=128,
        pad_token_id=0,
        eos_token_id=0,
        bos_token_id=0,
    )
    if kind == "llama":
        cfg = LlamaConfig(**common, tie_word_embeddings=True)
    elif kind == "gemma3":  # sliding (window 4) and full attention mixed, no softcapping
        layers = ["sliding_attention", "full_attention", "sliding_attention"]
        cfg = Gemma3TextConfig(
            **common, query_pre_attn_scalar=16, sliding_window=GEMMA3_WINDOW, layer_types=layers
        )
    else:
        cfg = Gemma2Config(**common, query_pre_attn_scalar=16, sliding_window=64)
    attn = "eager" if kind == "gemma2" else "sdpa"  # Gemma-2's softcapping has no SDPA path
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn).eval().requires_grad_(False)
    if kind == "gemma3":  # Gemma norms multiply by (1 + w) and w starts at 0: make w matter
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.randn(p.shape) * 0.5)
    model.name_or_path_ = f"tiny-{kind}"
    return model


@pytest.fixture(scope="session")
def tiny_llama(tiny_tokenizer):
    return _tiny("llama", len(tiny_tokenizer))


@pytest.fixture(scope="session")
def tiny_gemma(tiny_tokenizer):
    return _tiny("gemma2", len(tiny_tokenizer))


@pytest.fixture(scope="session")
def tiny_gemma3(tiny_tokenizer):
    """Gemma 3 text model: embeddings scaled inside the module, (1 + w) norms, sliding window 4."""
    return _tiny("gemma3", len(tiny_tokenizer))


@pytest.fixture(params=["llama", "gemma2"])
def tiny_model(request, tiny_llama, tiny_gemma):
    return tiny_llama if request.param == "llama" else tiny_gemma


@pytest.fixture
def tiny_sae(tmp_path, tiny_llama):
    from featuredream.saes.loading import load_sae

    return load_sae(write_sae_dir(tmp_path / "sae"), model=tiny_llama)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory, tiny_llama, tiny_tokenizer):
    root = tmp_path_factory.mktemp("cli")
    tiny_llama.save_pretrained(root / "model")
    tiny_tokenizer.save_pretrained(root / "model")
    return {
        "model": str(root / "model"),
        "sae": str(identity_sae_dir(root / "sae")),
        "wide": str(identity_sae_dir(root / "wide", d_in=32)),
        "deep": str(identity_sae_dir(root / "deep", hook="blocks.7.hook_resid_post")),
        "query": str(identity_sae_dir(root / "query", d_in=16, hook="blocks.1.attn.hook_q", head=2)),
        "query9": str(identity_sae_dir(root / "query9", d_in=16, hook="blocks.1.attn.hook_q", head=9)),
        "root": root,
    }


@pytest.fixture(scope="session")
def default_model():
    """The real embedded default model (SmolLM2-135M-Instruct) and its tokenizer, for slow tests."""
    from featuredream.models.loading import load_model

    torch.manual_seed(0)
    return load_model(None, device="cpu")


@pytest.fixture(scope="session")
def gemma3_270m():
    """The converted Gemma 3 270M from the cache; skipped (never downloaded here) when absent."""
    from featuredream.models.loading import cache_dir, load_model
    from featuredream.models.packaged import GEMMA3_270M

    if not (cache_dir() / "models" / GEMMA3_270M / "config.json").exists():
        pytest.skip(f"Gemma 3 270M is not converted in {cache_dir()}: run load_model('gemma3-270m') once")
    return load_model("gemma3-270m", device="cpu", dtype="float32")
