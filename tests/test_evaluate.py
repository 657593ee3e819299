import torch

from featuredream.evaluate import Evaluator, pad_right, reference_evaluate
from featuredream.objectives import SAEEncoder


def test_fast_path_equals_reference(tiny_llama, tiny_tokenizer, tiny_sae):
    texts = ["The quick brown fox jumps", "To be or not", "def parse(text): return json", "Paris"]
    seqs = [torch.tensor(tiny_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    ids, lengths = pad_right(seqs, tiny_tokenizer.pad_token_id)
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

    def flaky(ids, lengths):
        calls.append(len(ids))
        if len(ids) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(ids, lengths)

    monkeypatch.setattr(ev, "_run", flaky)
    ids = torch.randint(1, 300, (6, 5))
    out = ev(ids, torch.full((6,), 5))
    assert ev.batch_size == 2 and ev.n_oom == 2
    ref = Evaluator(tiny_llama, obj)(ids, torch.full((6,), 5))
    torch.testing.assert_close(out.scores, ref.scores)
