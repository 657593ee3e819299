"""The fluency judge: its percentile equals a hand count among the reference windows, its XE a plain forward
pass; references are cached per model and windows; the shipped reference is what the default judge gives."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from featuredream.text import judge as judge_mod
from featuredream.text.judge import FluencyJudge, JudgeScore, judge_reference, percentile_of, resolve_judge


def test_percentile_is_a_count_of_lower_windows_with_ties_half():
    ref = torch.tensor([[1.0, 4.0], [2.0, 3.0], [3.0, 2.0], [4.0, 1.0]])  # columns: 2 and 3 tokens
    assert percentile_of(ref, 2.5, 2) == 50.0  # 1.0, 2.0 lower of 4
    assert percentile_of(ref, 2.0, 2) == 100 * 1.5 / 4  # one lower, one tie
    assert percentile_of(ref, 0.5, 3) == 0.0 and percentile_of(ref, 9.0, 3) == 100.0
    assert percentile_of(ref, 3.5, 3) == 75.0
    assert percentile_of(ref, 3.5, 40) == 75.0  # longer than the windows: whole windows
    assert math.isnan(percentile_of(ref, 1.0, 1))


@pytest.fixture
def small_reference(monkeypatch, tmp_path, tiny_tokenizer):
    """The prose reference cut to 24 windows of 12 tokens of fixture text (no download), a fresh cache."""
    from featuredream.text import prose

    monkeypatch.setenv("FEATUREDREAM_CACHE", str(tmp_path / "cache"))
    g = torch.Generator().manual_seed(0)
    windows = torch.randint(3, len(tiny_tokenizer), (24, 12), generator=g)
    monkeypatch.setattr(prose, "prose_windows", lambda tok: windows)
    return windows


def test_judge_xe_and_percentile_by_hand(tiny_gemma3, tiny_tokenizer, small_reference):
    model = tiny_gemma3
    ref = judge_reference(model, tiny_tokenizer, "tiny")
    assert ref.shape == (24, 11)
    judge = FluencyJudge(model, tiny_tokenizer, "tiny", ref)
    text = "The capital of France is Paris."
    (s,) = judge.score([text])
    ids = torch.tensor([tiny_tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    xe = float(F.cross_entropy(logits[0, :-1], ids[0, 1:]))
    assert s.tokens == ids.shape[1] and abs(s.xe - xe) < 1e-5
    # the reference by hand: each window's first m tokens alone
    m = min(s.tokens, 12)
    with torch.no_grad():
        wl = model(input_ids=small_reference[:, :m]).logits
    col = torch.stack(
        [F.cross_entropy(wl[i, :-1], small_reference[i, 1:m]) for i in range(len(small_reference))]
    )
    want = 100 * (float((col < s.xe).sum()) + 0.5 * float((col == s.xe).sum())) / len(col)
    assert abs(s.percentile - want) < 1e-9
    assert s == JudgeScore(s.xe, s.percentile, s.tokens, "tiny")
    assert judge.score(["x"])[0].percentile != judge.score(["x"])[0].percentile  # NaN under 2 tokens


def test_reference_is_cached_per_model_and_windows(
    tiny_gemma3, tiny_llama, tiny_tokenizer, small_reference, monkeypatch
):
    from featuredream.text import xe_table as sae_stats

    first = judge_reference(tiny_gemma3, tiny_tokenizer, "tiny")
    calls = []
    real = sae_stats.prefix_xe
    monkeypatch.setattr(sae_stats, "prefix_xe", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert torch.equal(judge_reference(tiny_gemma3, tiny_tokenizer, "tiny"), first)
    assert calls == []  # read back
    other = judge_reference(tiny_llama, tiny_tokenizer, "tiny")  # another model: computed, not reused
    assert calls == [1] and not torch.equal(other, first)


def test_a_shipped_reference_of_another_model_is_not_used(
    tiny_gemma3, tiny_tokenizer, small_reference, monkeypatch, tmp_path
):
    from safetensors.torch import save_file

    fake = tmp_path / "shipped.safetensors"
    save_file(
        {"prefix_xe": torch.zeros(24, 11)}, str(fake), metadata={"model": "other", "windows_digest": "x"}
    )
    monkeypatch.setattr(judge_mod, "shipped_path", lambda name: fake)
    assert float(judge_reference(tiny_gemma3, tiny_tokenizer, "tiny").abs().sum()) > 0


def test_resolve_judge():
    assert resolve_judge(None) is None and resolve_judge("none") is None
    j = FluencyJudge(None, None, "x", torch.zeros(1, 1))
    assert resolve_judge(j) is j


def test_a_judge_that_is_the_dreaming_model_gives_way_or_warns(tiny_gemma3, tiny_llama, monkeypatch, caplog):
    """The default judge never scores its own model's dreams: it gives way to the fallback judge, said once;
    a judge named explicitly is kept, with a warning; another model is used silently."""

    def alias(name):
        return judge_mod.DEFAULT_JUDGE if name == "default" else name

    models = {judge_mod.DEFAULT_JUDGE: tiny_gemma3, judge_mod.FALLBACK_JUDGE: tiny_llama, "mine": tiny_gemma3}
    monkeypatch.setattr(
        FluencyJudge,
        "load",
        classmethod(lambda cls, name, **kw: cls(models[alias(name)], None, alias(name), None)),
    )
    with caplog.at_level("WARNING"):
        assert resolve_judge("default", dreamer=tiny_llama).name == judge_mod.DEFAULT_JUDGE
        assert not caplog.messages
        assert resolve_judge("default", dreamer=tiny_gemma3).name == judge_mod.FALLBACK_JUDGE
        assert resolve_judge("mine", dreamer=tiny_gemma3).name == "mine"
    assert len(caplog.messages) == 2 and "not be independent" in caplog.messages[0]
    assert "no independent measure" in caplog.messages[1]


@pytest.mark.slow
def test_shipped_reference_is_what_the_default_judge_gives(gemma3_270m):
    """The shipped Gemma 3 270M reference matches the model and windows it claims, and 16 of its windows
    recomputed equal it."""
    from safetensors import safe_open

    from featuredream.models.identity import model_fingerprint
    from featuredream.text.corpus import windows_digest
    from featuredream.text.prose import prose_windows
    from featuredream.text.xe_table import prefix_xe

    model, tok = gemma3_270m
    windows = prose_windows(tok)
    with safe_open(str(judge_mod.shipped_path("gemma3-270m")), "pt") as f:
        meta, shipped = f.metadata(), f.get_tensor("prefix_xe")
    assert meta == {"model": model_fingerprint(model), "windows_digest": windows_digest(windows)}
    pick = torch.arange(0, 640, 40)  # news and documentation
    torch.testing.assert_close(prefix_xe(model, windows[pick], batch=16), shipped[pick], atol=2e-3, rtol=1e-3)
    (s,) = FluencyJudge(model, tok, "gemma3-270m", shipped).score(
        ["The government says the new laws will protect the privacy of personal information."]
    )
    assert s.percentile < 50  # a plain news sentence reads as fluent as typical prose
