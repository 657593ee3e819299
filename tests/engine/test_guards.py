"""The optimizer cannot cheat: norm hacking, non-finite scores; interruption and determinism."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from featuredream import DreamConfig, FunctionObjective, SAEEncoder, dream, ready
from featuredream.models.sites import Site
from featuredream.saes.loading import load_sae

FAST = dict(
    iters=10,
    n_children=32,
    min_tokens=3,
    max_tokens=10,
    progress=False,
    n_start_samples=3,
    gcg_topk=64,
    init_prompt="The quick brown fox",
    start="prompt",
    seed=1,
)


def _hacked_model(tiny_llama, token: int):
    """A copy of the tiny model whose embedding row ``token`` is 200x larger: a massive-norm position."""
    import copy

    m = copy.deepcopy(tiny_llama)
    m.model.embed_tokens.weight.data[token] *= 200
    m.lm_head.weight = torch.nn.Parameter(m.lm_head.weight.data.clone(), requires_grad=False)  # untie
    m.model.embed_tokens.weight.data[token] = tiny_llama.model.embed_tokens.weight.data[token] * 200
    return m


def _sae_reading_direction(tmp_path, direction: torch.Tensor, norm_cap: float):
    from helpers.saes import write_sae_dir

    d = write_sae_dir(tmp_path / "hack", stats={"norm_cap": norm_cap})
    from safetensors.torch import load_file, save_file

    w = load_file(str(d / "sae_weights.safetensors"))
    w["W_enc"][:, 0] = direction / direction.norm()
    w["b_dec"].zero_()
    save_file(w, str(d / "sae_weights.safetensors"))
    return d


def test_norm_guard_stops_norm_hacking(tiny_llama, tiny_tokenizer, tmp_path):
    token = tiny_tokenizer.convert_tokens_to_ids("Ġthe")
    model = _hacked_model(tiny_llama, token)
    ids = torch.tensor([tiny_tokenizer("a the b", add_special_tokens=False)["input_ids"]])
    from featuredream.models.sites import run_sites

    acts, _ = run_sites(model, [Site("resid_post", 1)], input_ids=ids)
    x = acts[Site("resid_post", 1)][0]
    pos = ids[0].tolist().index(token)
    norms = x.norm(dim=-1)
    assert norms[pos] > 10 * norms.median()  # the constructed massive-activation position
    sae_dir = _sae_reading_direction(tmp_path, x[pos], norm_cap=float(3 * norms.median()))
    sae = load_sae(sae_dir, model=model)
    off = dream(
        model, tiny_tokenizer, SAEEncoder(sae, 0, reduce="max", norm_guard=False), DreamConfig(**FAST)
    )
    on = dream(model, tiny_tokenizer, SAEEncoder(sae, 0, reduce="max", norm_guard=True), DreamConfig(**FAST))
    assert token in off.best.ids  # without the guard the optimizer finds the hack ...
    assert off.best.activation > 5 * abs(on.best.activation)
    assert on.n_capped_positions > 0  # ... with it, those positions are flagged and never counted
    hacked = [a for t, a in zip(on.best.ids, on.best.token_acts) if t == token]
    assert on.best.activation < max(off.best.token_acts) / 5 and not any(
        a == on.best.activation for a in hacked
    )


def test_nonfinite_scores_dropped_and_counted(tiny_llama, tiny_tokenizer):
    site = Site("resid_post", 1)

    def fn(acts):
        x = acts[site]
        vals = x[..., 0].clone()
        vals[x[..., 1] > x[..., 1].flatten().quantile(0.8)] = float("nan")  # NaN on ~20% of positions
        return vals

    cfg = DreamConfig(**{**FAST, "start": "auto", "n_start_samples": 6})
    r = dream(tiny_llama, tiny_tokenizer, FunctionObjective(fn, [site], reduce="last"), cfg)
    assert r.n_nonfinite > 0
    assert torch.isfinite(torch.tensor(r.best.activation))
    assert all(torch.isfinite(torch.tensor(h.best_activation)) for h in r.history)


def test_same_seed_same_result_and_environment_recorded(tiny_llama, tiny_tokenizer, tiny_sae):
    obj = SAEEncoder(tiny_sae, 4)
    a = dream(tiny_llama, tiny_tokenizer, obj, DreamConfig(**{**FAST, "start": "auto"}))
    b = dream(tiny_llama, tiny_tokenizer, obj, DreamConfig(**{**FAST, "start": "auto"}))
    assert a.best.ids == b.best.ids and a.best.activation == b.best.activation
    assert [h.best_activation for h in a.history] == [h.best_activation for h in b.history]
    env = a.environment
    assert env.torch == torch.__version__ and env.device == "cpu" and env.dtype == "float32" and a.seed == 1


def test_sigint_writes_best_so_far_and_exits_130(tmp_path, tiny_llama, tiny_tokenizer):
    from helpers.saes import identity_sae_dir

    tiny_llama.save_pretrained(tmp_path / "model")
    tiny_tokenizer.save_pretrained(tmp_path / "model")
    sae = identity_sae_dir(tmp_path / "sae")
    out = tmp_path / "r.json"
    cmd = [
        sys.executable,
        "-m",
        "featuredream.cli",
        "dream",
        "--model",
        str(tmp_path / "model"),
        "--sae",
        str(sae),
        "--feature",
        "2",
        "--iters",
        "100000",
        "--min-tokens",
        "3",
        "--max-tokens",
        "10",
        "--out",
        str(out),
        "--patience",
        "1000000",
        "--n-children",
        "8",
    ]
    flag = tmp_path / "ready"
    proc = subprocess.Popen(
        cmd,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", ready.ENV: str(flag)},
    )
    try:
        # The dream holds at its ready point (model loaded, Ctrl-C armed) until the flag is removed, so
        # the signal arrives at a known moment on any machine; the timeouts are only safety nets.
        try:
            point = ready.wait_for(flag, proc)
        except RuntimeError as e:
            raise AssertionError(f"{e}: {proc.communicate(timeout=60)[1][-1500:]!r}") from None
        assert point == "dream-started"
        proc.send_signal(signal.SIGINT)
        flag.unlink()  # go on: the loop stops after its first iteration (100000 would take hours)
        out_s, err_s = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 130, (out_s[-500:], err_s[-1500:])
    res = json.loads(out.read_text())
    assert res["interrupted"] is True and res["best"]["text"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_graceful_sigint_first_asks_second_raises():
    from featuredream.engine.interrupt import graceful_sigint, stop_requested

    before = signal.getsignal(signal.SIGINT)
    with graceful_sigint():
        assert not stop_requested()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs at the next bytecode boundary
        assert stop_requested()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    assert signal.getsignal(signal.SIGINT) is before and not stop_requested()


def test_dream_stops_cleanly_when_asked(tiny_llama, tiny_tokenizer, tiny_sae, monkeypatch):
    """A stop request (first Ctrl-C) ends the loop after the current iteration with a verified result."""
    import featuredream.engine.loop as loop
    from featuredream.engine.config import DreamConfig
    from featuredream.engine.dream import dream
    from featuredream.objectives.kinds import SAEEncoder

    calls = iter(range(1000))
    monkeypatch.setattr(loop, "stop_requested", lambda: next(calls) >= 2)
    cfg = DreamConfig(iters=50, n_children=8, min_tokens=3, max_tokens=10, progress=False, start="prompt",
                      init_prompt="The quick brown fox")  # fmt: skip
    r = dream(tiny_llama, tiny_tokenizer, SAEEncoder(tiny_sae, 3), cfg)
    assert r.interrupted and r.stop_reason == "interrupted" and len(r.history) == 3
    assert r.verification.abs_error <= r.verification.tolerance
