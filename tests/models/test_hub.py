"""Hub names that are not cached fail in one line within seconds (offline: no minute of retries)."""

from __future__ import annotations

import time

import pytest

from featuredream.models import hub


@pytest.fixture
def offline(monkeypatch):
    """The hub never answers (whatever this machine's network), so the local cache alone is read."""
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: False)


def _fails_fast(fn, match: str, seconds: float = 20.0):
    t = time.time()
    with pytest.raises(ValueError, match=match) as e:
        fn()
    assert time.time() - t < seconds
    assert "\n" not in str(e.value)
    return str(e.value)


def test_uncached_hub_model_fails_fast(offline):
    from featuredream.models.loading import load_model

    _fails_fast(lambda: load_model("nobody/no-such-model-xyz"), "unknown model 'nobody/no-such-model-xyz'")


def test_uncached_registry_sae_fails_fast(offline):
    from featuredream.saes.loading import load_sae

    msg = _fails_fast(lambda: load_sae("gpt2-small-res-jb:blocks.8.hook_resid_pre"), "sae-lens registry")
    assert "not reachable" in msg


def test_uncached_dataset_fails_fast(offline):
    pytest.importorskip("datasets")
    from featuredream.text.corpus import load_corpus

    _fails_fast(lambda: load_corpus("hf:nobody/no-such-dataset-xyz"), "could not load dataset")


def test_offline_mode_is_restored(offline):
    import os

    import huggingface_hub.constants as hf

    before = hf.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE")
    with hub.hub_access() as online:
        assert online is False and hf.HF_HUB_OFFLINE is True
    assert (hf.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE")) == before
