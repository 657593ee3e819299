"""The cascade is documented as exact: scoring children up to the objective's layer first and finishing the
forward pass (for XE) only for those that could enter the buffer must not change the search. On a fixed
seed, with a fluency term so that XE is needed, cascade on and off give the same best prompt, the same
buffer and the same history, while the cascade really skips work (fewer rows reach the LM head)."""

from __future__ import annotations

import pytest
from helpers.by_hand import mean_xe

from featuredream import DreamConfig, SAEEncoder, dream

START = "The quick brown fox"


def _run(model, tok, obj, **kw):
    rows = [0]

    def count(module, args, out):
        rows[0] += out.shape[0] * out.shape[1]

    hook = model.get_output_embeddings().register_forward_hook(count)
    try:
        cfg = DreamConfig(
            iters=8,
            n_children=32,
            min_tokens=3,
            max_tokens=14,
            progress=False,
            gcg_topk=32,
            seed=1,
            init_prompt=START,
            start="prompt",
            **kw,
        )
        return dream(model, tok, obj, cfg), rows[0]
    finally:
        hook.remove()


@pytest.mark.parametrize("fluency", ["xe_max", "xe_regularization"])
def test_cascade_on_equals_cascade_off(tiny_llama, tiny_tokenizer, tiny_sae, one_thread, fluency):
    obj = SAEEncoder(tiny_sae, 11)
    xe0 = mean_xe(tiny_llama, tiny_tokenizer(START, add_special_tokens=False)["input_ids"])
    # a ceiling just under the start's XE (the start is infeasible: the cascade must handle that too), or
    # a penalty small enough that children's activations differ by more than lambda * XE (else none is cut)
    kw = {"xe_max": 0.98 * xe0} if fluency == "xe_max" else {"xe_regularization": 0.001}
    on, rows_on = _run(tiny_llama, tiny_tokenizer, obj, cascade=True, **kw)
    off, rows_off = _run(tiny_llama, tiny_tokenizer, obj, cascade=False, **kw)
    assert rows_on < rows_off  # the cascade did cut children off (else this test proves nothing)
    assert on.best.ids == off.best.ids and on.best.text == off.best.text
    assert on.best.activation == pytest.approx(off.best.activation, abs=1e-5)
    assert on.best.xe == pytest.approx(off.best.xe, abs=1e-5)
    assert on.feasible == off.feasible
    assert [p.ids for p in on.buffer] == [p.ids for p in off.buffer]
    assert [p.activation for p in on.buffer] == pytest.approx([p.activation for p in off.buffer], abs=1e-5)
    assert [p.xe for p in on.buffer] == pytest.approx([p.xe for p in off.buffer], abs=1e-5)
    for a, b in zip(on.history, off.history, strict=True):
        assert a.best_activation == pytest.approx(b.best_activation, abs=1e-5)
        assert a.best_xe == pytest.approx(b.best_xe, abs=1e-5)
        assert a.best_tokens == b.best_tokens and a.candidates == b.candidates
    assert on.n_evaluated == off.n_evaluated  # each candidate counted once either way
