"""The front doors' fluency judge: it scores the reported prompts after the search, never inside it."""

from __future__ import annotations

import torch

from featuredream.engine.config import DreamConfig
from featuredream.engine.dream import dream, dream_features
from featuredream.objectives.kinds import SAEEncoder
from featuredream.text.judge import FluencyJudge

FAST = dict(iters=4, n_children=16, min_tokens=3, max_tokens=10, progress=False, n_start_samples=3)


def _judge(model, tok) -> FluencyJudge:
    ref = (
        torch.linspace(2.0, 8.0, 40)[:, None].expand(40, 15).contiguous()
    )  # a reference with known quantiles
    return FluencyJudge(model, tok, "tiny-judge", ref)


def test_judge_scores_the_best_prompt_and_every_rung(tiny_llama, tiny_gemma3, tiny_tokenizer, tiny_sae):
    judge = _judge(tiny_gemma3, tiny_tokenizer)
    cfg = DreamConfig(**FAST, seed=2, ladder=(50.0, None), init_prompt="The quick brown fox", start="prompt")
    obj = SAEEncoder(tiny_sae, 5)
    r = dream(tiny_llama, tiny_tokenizer, obj, cfg, judge=judge)
    assert r.judge == judge.score([r.best.text])[0]
    assert [g.judge for g in r.ladder] == [s for s in judge.score([g.prompt.text for g in r.ladder])]
    assert r.judge.judge == "tiny-judge" and 0 <= r.judge.percentile <= 100
    # the judge is not used inside the search: the same run without it finds the same prompt
    plain = dream(tiny_llama, tiny_tokenizer, obj, cfg)
    assert plain.best.text == r.best.text and plain.judge is None


def test_dream_features_judges_every_feature(tiny_llama, tiny_gemma3, tiny_tokenizer, tiny_sae):
    judge = _judge(tiny_gemma3, tiny_tokenizer)
    out = dream_features(tiny_llama, tiny_tokenizer, tiny_sae, [1, 2], DreamConfig(**FAST), judge=judge)
    assert [r.judge for r in out] == [judge.score([r.best.text])[0] for r in out]
