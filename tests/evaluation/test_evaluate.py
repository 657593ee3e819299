import torch
from helpers.massive import SITE as MSITE
from helpers.massive import massive_token_model

from featuredream.evaluation.evaluate import Evaluator, reference_evaluate
from featuredream.models.padding import pad
from featuredream.objectives.kinds import DirectionObjective, SAEEncoder
from featuredream.text.activation_store import site_norm_cap


def test_fast_path_equals_reference(tiny_llama, tiny_tokenizer, tiny_sae):
    texts = ["The quick brown fox jumps", "To be or not", "def parse(text): return json", "Paris"]
    seqs = [torch.tensor(tiny_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    ids, mask = pad(seqs, tiny_tokenizer.pad_token_id)
    lengths = mask.sum(1)
    for reduce in ("last", "max", "mean"):
        obj = SAEEncoder(tiny_sae, 9, reduce=reduce)
        fast = Evaluator(tiny_llama, obj, need_xe=True, batch_size=3)(ids, lengths)
        ref = reference_evaluate(tiny_llama, tiny_tokenizer, obj, texts)
        torch.testing.assert_close(fast.scores, ref.scores, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(fast.xe, ref.xe, atol=1e-4, rtol=1e-4)
        for i, s in enumerate(seqs):
            torch.testing.assert_close(
                fast.token_acts[i, : len(s)], ref.token_acts[i, : len(s)], atol=1e-4, rtol=1e-4
            )


def test_early_exit_same_scores_no_xe(tiny_llama, tiny_sae):
    ids = torch.randint(1, 300, (5, 8))
    lengths = torch.tensor([8, 3, 5, 8, 2])
    obj = SAEEncoder(tiny_sae, 4, reduce="max")
    full = Evaluator(tiny_llama, obj, need_xe=True)(ids, lengths)
    early = Evaluator(tiny_llama, obj, need_xe=False)(ids, lengths)
    torch.testing.assert_close(full.scores, early.scores)
    assert torch.isnan(early.xe).all()


def test_padding_values_do_not_matter(tiny_llama, tiny_sae):
    ids = torch.randint(1, 300, (3, 7))
    lengths = torch.tensor([7, 4, 2])
    other = ids.clone()
    for i, n in enumerate(lengths):
        other[i, n:] = 123
    obj = SAEEncoder(tiny_sae, 4, reduce="mean")
    a = Evaluator(tiny_llama, obj)(ids, lengths)
    b = Evaluator(tiny_llama, obj)(other, lengths)
    torch.testing.assert_close(a.scores, b.scores)
    torch.testing.assert_close(a.xe, b.xe)


def test_oom_halves_batch_and_continues(tiny_llama, tiny_sae, monkeypatch):
    obj = SAEEncoder(tiny_sae, 4)
    ev = Evaluator(tiny_llama, obj, batch_size=8)
    real = ev._run
    calls = []

    def flaky(ids, lengths, owner):
        calls.append(len(ids))
        if len(ids) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(ids, lengths, owner)

    monkeypatch.setattr(ev, "_run", flaky)
    ids = torch.randint(1, 300, (6, 5))
    out = ev(ids, torch.full((6,), 5))
    assert ev.batch_size == 2 and ev.n_oom == 2
    ref = Evaluator(tiny_llama, obj)(ids, torch.full((6,), 5))
    torch.testing.assert_close(out.scores, ref.scores)


def _bf16_copy(model):
    import copy

    return copy.deepcopy(model).to(torch.bfloat16)


def test_bfloat16_close_to_float32_and_prefix_cache_in_bfloat16(tiny_model, tiny_sae):
    """The GPU dtype, run on CPU: bf16 scores / XE within bf16 tolerance of fp32 (2% of the score range,
    0.05 nats), and the prefix cache in bf16 equal to the plain bf16 path within the same tolerance."""
    from featuredream.engine.mutations import gcg_swap

    g = torch.Generator().manual_seed(0)
    parent = torch.randint(1, 300, (10,), generator=g)
    kids, _ = gcg_swap(parent, torch.randn(10, 300, generator=g), 12, 16, g)
    lengths = torch.full((12,), 10)
    obj = SAEEncoder(tiny_sae, 4, reduce="mean")
    ref = Evaluator(tiny_model, obj, need_xe=True)(kids, lengths)
    half = _bf16_copy(tiny_model)
    low = Evaluator(half, obj, need_xe=True)(kids, lengths)
    ev = Evaluator(half, obj, need_xe=True, prefix_cache=True)
    ev.bucket_overhead = 0
    cached = ev(kids, lengths, parent=parent)
    assert ev.n_cached_tokens > 0
    atol = 0.02 * float(ref.scores.max() - ref.scores.min()) + 1e-3
    for out in (low, cached):
        assert out.scores.dtype == torch.float32 and out.xe.dtype == torch.float32
        torch.testing.assert_close(out.scores, ref.scores, atol=atol, rtol=0.02)
        torch.testing.assert_close(out.xe, ref.xe, atol=0.05, rtol=0.01)


def test_load_model_bfloat16_on_cpu(tiny_dirs, tiny_sae):
    from featuredream.models.loading import load_model

    model, tok = load_model(tiny_dirs["model"], device="cpu", dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    ids = torch.randint(1, 300, (3, 6))
    out = Evaluator(model, SAEEncoder(tiny_sae, 1))(ids, torch.full((3,), 6))
    assert torch.isfinite(out.scores).all() and torch.isfinite(out.xe).all()


def test_device_choice_prefers_cuda_when_available(monkeypatch):
    from featuredream.models.loading import parse_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert parse_device(None).type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert parse_device(None).type == "cuda" and parse_device("cuda:0").index == 0


def test_runtime_defaults_bf16_and_flash_attention_only_on_cuda(monkeypatch):
    """The CUDA-only choices, exercised on CPU with faked capabilities."""
    import importlib.util

    from featuredream.models.loading import runtime_defaults

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert runtime_defaults(cpu, None) == (torch.float32, "sdpa")
    assert runtime_defaults(cpu, torch.bfloat16) == (torch.bfloat16, "sdpa")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "flash_attn" else real(n, *a))
    assert runtime_defaults(gpu, None) == (torch.bfloat16, "sdpa")
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: object() if n == "flash_attn" else real(n, *a)
    )
    assert runtime_defaults(gpu, None) == (torch.bfloat16, "flash_attention_2")
    assert runtime_defaults(gpu, torch.float32) == (torch.float32, "sdpa")  # flash-attn needs 16-bit
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert runtime_defaults(gpu, None) == (torch.float32, "sdpa")  # e.g. a V100


def test_oom_as_runtime_error_frees_cuda_cache_and_other_errors_propagate(tiny_llama, tiny_sae, monkeypatch):
    """Older torch / some kernels raise ``RuntimeError('CUDA out of memory ...')``: halve, free, retry."""
    import pytest

    obj = SAEEncoder(tiny_sae, 4)
    ev = Evaluator(tiny_llama, obj, batch_size=4)
    real = ev._run
    freed = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: freed.append(1))

    def flaky(ids, lengths, owner):
        if len(ids) > 1:
            raise RuntimeError("CUDA error: out of memory")
        return real(ids, lengths, owner)

    monkeypatch.setattr(ev, "_run", flaky)
    ids = torch.randint(1, 300, (3, 5))
    out = ev(ids, torch.full((3,), 5))
    assert ev.batch_size == 1 and ev.n_oom == 2 and len(freed) == 2
    torch.testing.assert_close(out.scores, Evaluator(tiny_llama, obj)(ids, torch.full((3,), 5)).scores)

    def broken(ids, lengths, owner):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(ev, "_run", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        ev(ids, torch.full((3,), 5))


def test_the_reference_path_applies_the_sites_cap(tiny_llama, tiny_tokenizer, one_thread):
    """Re-scoring a text that ends on a massive-norm token: a fresh direction objective (cap not yet
    measured) scores -inf there, like the fast path; unguarded it reads the huge value."""
    model, token, d = massive_token_model(tiny_llama, tiny_tokenizer)
    text = tiny_tokenizer.decode(
        [*tiny_tokenizer("The quick brown fox", add_special_tokens=False)["input_ids"], token]
    )
    assert tiny_tokenizer(text, add_special_tokens=False)["input_ids"][-1] == token
    hole = reference_evaluate(model, tiny_tokenizer, DirectionObjective(MSITE, d, norm_guard=False), [text])
    assert float(hole.scores[0]) > 10 * site_norm_cap(model, tiny_tokenizer, MSITE)  # a projection > the cap
    fresh = DirectionObjective(MSITE, d)
    ref = reference_evaluate(model, tiny_tokenizer, fresh, [text])
    assert float(ref.scores[0]) == -float("inf") and not bool(ref.valid[0, -1]) and bool(ref.valid[0, 0])
    ids, mask = pad([torch.tensor(tiny_tokenizer(text, add_special_tokens=False)["input_ids"])], 0)
    lengths = mask.sum(1)
    fast = Evaluator(model, fresh)(ids, lengths)
    assert float(fast.scores[0]) == -float("inf")
