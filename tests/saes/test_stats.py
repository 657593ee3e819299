"""``featuredream stats``: the streaming pass equals the in-memory reference, resumes after a kill, is found by
``load_sae`` without being told, refuses bad input in one line, and remakes the shipped statistics."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers.cli import dream_args, run_cli
from helpers.saes import write_sae_dir

from featuredream.saes.loading import load_sae
from featuredream.saes.stats import StatsConfig, StatsInputs, compute_statistics
from featuredream.text.corpus import split_windows
from featuredream.text.xe_table import xe_quantile_table

WORDS = (
    "the king speaks of war and peace while the queen reads old letters by the fire; def parse(text): "
    "return json.loads(text) if text else None; once upon a time a girl lived near the forest"
).split()


def _docs(n=40, words=90, seed=0):
    """Random documents over a fixed vocabulary of words (the tiny tokenizer knows their pieces)."""
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[i] for i in torch.randint(len(WORDS), (words,), generator=g)) for _ in range(n)]


CFG = StatsConfig(
    tokens=24 * 16, heldout_tokens=20 * 16, ctx=16, top_k_examples=3, after=2, batch=5, xe_reference="heldout"
)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATUREDREAM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def setup(tmp_path, tiny_llama, tiny_tokenizer, one_thread, cache):
    sae = load_sae(write_sae_dir(tmp_path / "sae", d_sae=32), model=tiny_llama)
    inp = StatsInputs(tiny_llama, tiny_tokenizer, sae, _docs(), "random words", "tiny", "tiny-sae")
    return inp


def _reference(inp: StatsInputs, cfg: StatsConfig, cap: float):
    """Brute force over all activations at once: each window's maximum per latent (valid positions only),
    the top windows per latent, their tokens and values up to ``after`` tokens past the activating one."""
    gen = torch.Generator().manual_seed(cfg.seed)
    wins, held = split_windows(inp.tok, inp.docs, cfg.ctx, cfg.tokens, cfg.heldout_tokens, gen)
    with torch.no_grad():
        acts = inp.model(input_ids=wins, output_hidden_states=True).hidden_states[2]  # resid_post of layer 1
    keep = acts.norm(dim=-1) <= cap  # [n, ctx]
    s = inp.sae.sae
    pre = (acts - s.b_dec) @ s.W_enc + s.b_enc  # [n, ctx, d]
    code = s.encode(acts)
    m, p = pre.masked_fill(~keep[..., None], -math.inf).max(1)  # [n, d]
    val, win = m.sort(dim=0, descending=True, stable=True)  # ties: the earlier window first
    val, win = val[: cfg.top_k_examples], win[: cfg.top_k_examples]  # [k, d]
    pos = p.gather(0, win)
    n, ctx = wins.shape
    span = torch.arange(ctx)[None, None] <= pos[..., None] + cfg.after  # [k, d, ctx]
    lat = torch.arange(pre.shape[-1])[None, :].expand_as(win)
    tokens = torch.full((*win.shape, ctx + cfg.after), -1, dtype=torch.int32)
    tokens[..., :ctx] = torch.where(span, wins[win], -1)
    per_tok = pre[win, :, lat].masked_fill(~(span & keep[win]), 0.0)
    unit = s.W_dec / s.W_dec.norm(dim=1, keepdim=True)
    out = {
        "max_activation": val[0],
        "max_projection": (acts[keep] @ unit.T).max(0).values,
        "fire_rate": (code[keep] > 0).float().mean(0),
        "top_values": val.T,
        "top_pos": pos.T,
        "top_tokens": tokens.permute(1, 0, 2),
        "top_acts": torch.cat([per_tok, torch.zeros(*win.shape, cfg.after)], -1).permute(1, 0, 2),
    }
    out.update(xe_quantile_table(inp.model, held))
    return out


def test_streaming_pass_equals_the_in_memory_reference(setup, tmp_path):
    """Batches of 5 windows and checkpoints every 3 windows merge to exactly what one pass over all
    activations gives: maxima, top examples (tokens, activating index, per-token values), fire rates,
    decoder projections, and the XE table."""
    st = compute_statistics(setup, StatsConfig(**{**CFG.__dict__, "chunk_tokens": 48}), tmp_path / "out")
    ref = _reference(setup, CFG, st.info["norm_cap"])
    assert st.info["statistics_windows"] == 24 and st.info["xe_table_windows"] == 20
    for name in ("max_activation", "max_projection", "fire_rate", "top_values", "xe_quantiles"):
        torch.testing.assert_close(st.tensors[name], ref[name], rtol=1e-5, atol=1e-5, msg=name)
    assert torch.equal(st.top_tokens, ref["top_tokens"])
    assert torch.equal(st.top_pos.long(), ref["top_pos"].long())
    torch.testing.assert_close(st.top_acts.float(), ref["top_acts"].float(), rtol=2e-3, atol=2e-3)
    assert (st.fire_rate > 0).any() and (st.top_pos >= 0).all()
    info = json.loads((tmp_path / "out" / "stats.json").read_text())
    for key in ("model", "sae", "corpus_digest", "windows_digest", "tokens", "date", "norm_cap"):
        assert info[key] not in (None, ""), key
    assert info["tokens"] == 24 * 16


def test_default_xe_table_is_the_models_prose_reference(setup, tmp_path, monkeypatch):
    """By default the XE table is the model's table on the prose reference (the same for every SAE of the
    model), not the corpus' held-out windows."""
    from featuredream.text import prose
    from featuredream.text.xe_table import reference_xe_table

    g = torch.Generator().manual_seed(3)
    windows = torch.randint(3, len(setup.tok), (30, 16), generator=g)
    monkeypatch.setattr(prose, "prose_windows", lambda tok: windows)
    cfg = StatsConfig(**{**CFG.__dict__, "xe_reference": "prose"})
    st = compute_statistics(setup, cfg, tmp_path / "out")
    want = reference_xe_table(setup.model, setup.tok, "unused")
    torch.testing.assert_close(st.tensors["xe_quantiles"], want["xe_quantiles"])
    torch.testing.assert_close(
        st.tensors["xe_quantiles"], xe_quantile_table(setup.model, windows)["xe_quantiles"]
    )
    assert st.info["xe_reference"].startswith("prose")


def test_norm_cap_drops_massive_positions(setup, tmp_path):
    """Without a recorded cap the pass sets 3 x the median norm and no example sits on a position above it."""
    st = compute_statistics(setup, CFG, tmp_path / "out")
    cap = st.info["norm_cap"]
    assert math.isfinite(cap) and cap > 0
    for lat in range(4):
        for ids, pos, _, _ in st.examples(lat):
            with torch.no_grad():
                x = setup.model(input_ids=torch.tensor([ids[: pos + 1]]), output_hidden_states=True)
            assert float(x.hidden_states[2][0, -1].norm()) <= cap + 1e-4


def test_a_killed_pass_resumes_losing_at_most_one_chunk(setup, tmp_path, monkeypatch):
    import featuredream.saes.stats as sp

    out = tmp_path / "out"
    cfg = StatsConfig(**{**CFG.__dict__, "chunk_tokens": 5 * 16})
    whole = compute_statistics(setup, cfg, tmp_path / "whole")
    real_save, saves = sp.TopState.save, []

    def save_then_die(self, path, meta):
        real_save(self, path, meta)
        saves.append(self.done)
        if len(saves) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(sp.TopState, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        compute_statistics(setup, cfg, out)
    assert saves == [5, 10] and (out / sp.PARTIAL).exists()
    monkeypatch.setattr(sp.TopState, "save", real_save)
    scanned = []
    real_update = sp.update_tally
    monkeypatch.setattr(
        sp, "update_tally", lambda st, *a: (scanned.append(a[2].shape[0]), real_update(st, *a))
    )
    resumed = compute_statistics(setup, StatsConfig(**{**cfg.__dict__, "resume": True}), out)
    assert sum(scanned) == 24 - 10  # only the windows after the last checkpoint
    for name in ("max_activation", "top_values", "top_tokens", "fire_rate", "max_projection"):
        assert torch.equal(resumed.tensors[name], whole.tensors[name]), name
    assert not (out / sp.PARTIAL).exists()


def test_resume_from_other_windows_is_refused(setup, tmp_path, monkeypatch):
    import featuredream.saes.stats as sp

    out = tmp_path / "out"
    monkeypatch.setattr(sp.TopState, "save", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        compute_statistics(setup, CFG, out)
    monkeypatch.undo()
    sp.TopState.empty(3, 32, 18, "cpu").save(out / sp.PARTIAL, {"windows_digest": "other"})
    with pytest.raises(ValueError, match="cannot resume.*windows_digest"):
        compute_statistics(setup, StatsConfig(**{**CFG.__dict__, "resume": True, "seed": 1}), out)


def test_load_sae_finds_cached_statistics(tiny_dirs, tmp_path, cache, capsys):
    """Written to the cache by the CLI, found by load_sae for this model and SAE (not another SAE), and
    then a dream has dataset starts, gets xe_max p90 and a ratio."""
    from featuredream.engine.starts import dataset_windows
    from featuredream.models.loading import load_model
    from featuredream.objectives.dataset import stats_examples
    from featuredream.objectives.kinds import SAEEncoder

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, d in enumerate(_docs()):
        (corpus / f"{i}.txt").write_text(d)
    args = ["stats", "--model", tiny_dirs["model"], "--sae", tiny_dirs["sae"], "--corpus", str(corpus)]
    code, out = run_cli(capsys, args + ["--tokens", "2048", "--heldout-tokens", "1280", "--ctx", "16"])
    assert code == 0, out.err
    assert "wrote" in out.out
    assert len(list(cache.glob("stats/*/*/features.safetensors"))) == 1
    model, _ = load_model(tiny_dirs["model"])
    sae = load_sae(tiny_dirs["sae"], model=model)
    assert (
        sae.stats is not None and sae.stats.has_xe_table() and sae.stats.info["kind"] == "featuredream stats"
    )
    other = write_sae_dir(tmp_path / "other", d_sae=128)  # another SAE at the same site
    assert load_sae(other, model=model).stats is None
    assert len(dataset_windows(stats_examples(SAEEncoder(sae, 3)), 16, 2)) > 0
    res = tmp_path / "dream.json"
    code, out = run_cli(capsys, dream_args(tiny_dirs, res) + ["--feature", "3"])
    assert code == 0, out.err
    r = json.loads(res.read_text())
    assert r["config"]["xe_max"] == "p90" and r["xe_limits"]["spec"] == "p90"
    assert r["dataset_max"] == pytest.approx(float(sae.stats.max_activation[3])) and r["ratio"] is not None


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--corpus", "MISSING"], "corpus path 'MISSING' does not exist"),
        (["--corpus", "EMPTY"], "holds no text"),
        (["--corpus", "SHORT"], "shorter than one window of 16 tokens"),
        (["--tokens", "10"], "--tokens 10 is below what the statistics need: valid is >= 128"),
        (["--heldout-tokens", "100"], "--heldout-tokens 100 is below what the XE table needs"),
    ],
)
def test_bad_input_is_one_line(tiny_dirs, tmp_path, cache, capsys, extra, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("   \n")
    (tmp_path / "short.txt").write_text("the king speaks")
    (tmp_path / "ok.txt").write_text(" ".join(_docs(4)))
    paths = {"MISSING": tmp_path / "missing", "EMPTY": tmp_path / "empty", "SHORT": tmp_path / "short.txt"}
    extra = [str(paths.get(x, x)) for x in extra]
    if "--corpus" not in extra:
        extra += ["--corpus", str(tmp_path / "ok.txt")]
    args = ["stats", "--model", tiny_dirs["model"], "--sae", tiny_dirs["sae"], "--ctx", "16", *extra]
    code, out = run_cli(capsys, args + ["--out", str(tmp_path / "out")])
    assert code == 2 and len(out.err.strip().splitlines()) == 1, out.err
    assert message.replace("'MISSING'", repr(str(tmp_path / "missing"))) in out.err


def test_an_sae_of_another_site_is_refused_in_one_line(tiny_dirs, tmp_path, cache, capsys):
    """The identity SAE of layer 1 declared at layer 7 (the tiny model has 3 layers), and a PCA-fitted
    SAE read at the wrong site, are refused before any pass."""
    code, out = run_cli(capsys, ["stats", "--model", tiny_dirs["model"], "--sae", tiny_dirs["deep"]])
    assert code == 2 and len(out.err.strip().splitlines()) == 1, out.err
    assert not list(cache.glob("stats/*"))
