"""Every number a dream reports is checked against an evaluation written here, independently of the
package: a plain forward pass with ``output_hidden_states=True`` and the SAE's weights applied by hand
(re-scoring with ``reference_evaluate`` would only repeat the package's own computation)."""

from __future__ import annotations

import pytest
from helpers.by_hand import decoder_projection, encoder_pre, mean_xe, resid

from featuredream import DreamConfig, dream, make_objective

TOL = dict(abs=1e-4, rel=1e-4)


def _values(model, sae, kind, latent, ids):
    x = resid(model, ids, "resid_post", 1)  # the fixture SAE reads blocks.1.hook_resid_post
    return (encoder_pre if kind == "encoder" else decoder_projection)(sae, x, latent)


@pytest.mark.parametrize(
    "kind,reduce,extra",
    [("encoder", "last", {}), ("decoder", "max", {"pareto": (0.1, 1.0)})],
    ids=["encoder-last", "decoder-max-pareto"],
)
def test_reported_numbers_match_an_independent_forward_pass(
    tiny_llama, tiny_tokenizer, tiny_sae, one_thread, kind, reduce, extra
):
    obj = make_objective(tiny_sae, 11, kind, reduce)
    cfg = DreamConfig(
        iters=6,
        n_children=24,
        min_tokens=3,
        max_tokens=14,
        progress=False,
        n_start_samples=3,
        gcg_topk=32,
        seed=3,
        init_prompt="The quick brown fox",
        start="prompt",
        **extra,
    )
    r = dream(tiny_llama, tiny_tokenizer, obj, cfg)
    red = (lambda v: v[-1]) if reduce == "last" else (lambda v: v.max())
    for p in [r.best, *r.buffer]:
        ids = tiny_tokenizer(p.text, add_special_tokens=False)["input_ids"]
        assert ids == p.ids, p.text  # the reported ids are the tokenization of the reported text
        vals = _values(tiny_llama, tiny_sae, kind, 11, ids)
        assert p.activation == pytest.approx(float(red(vals)), **TOL), p.text
        assert p.xe == pytest.approx(mean_xe(tiny_llama, ids), **TOL), p.text
    best_vals = _values(tiny_llama, tiny_sae, kind, 11, r.best.ids)
    assert r.best.token_acts == pytest.approx(best_vals.tolist(), **TOL)
    assert r.best.tokens == [tiny_tokenizer.decode([i]) for i in r.best.ids]
    # the fast path's own value for the best prompt agrees too (it is what the search ranked on)
    assert r.verification.fast_activation == pytest.approx(float(red(best_vals)), abs=1e-3, rel=1e-3)
    assert r.best.activation >= max(p.activation for p in r.buffer) - 1e-6
    if extra.get("pareto"):
        assert len(r.frontier) >= 1
        for f in r.frontier:
            ids = tiny_tokenizer(f.text, add_special_tokens=False)["input_ids"]
            vals = _values(tiny_llama, tiny_sae, kind, 11, ids)
            assert f.activation == pytest.approx(float(red(vals)), **TOL)
            assert f.xe == pytest.approx(mean_xe(tiny_llama, ids), **TOL)
