"""Bad input, through the CLI (in process and as a subprocess) and the API: one clear line, exit 2."""

from __future__ import annotations

import pytest
from helpers.cli import dream_args, run_cli
from helpers.saes import identity_sae_dir

from featuredream.models.loading import load_model
from featuredream.saes.loading import load_sae

BAD = [
    (["--feature", "-1"], "valid are 0..127"),
    (["--feature", "128"], "valid are 0..127"),
    (["--feature", "1.5"], "is not an integer"),
    (["--feature", "1", "--sae", "no-such-sae"], "unknown SAE spec 'no-such-sae'"),
    (["--feature", "1", "--sae", "WIDE"], "input width 32"),
    (["--feature", "1", "--sae", "DEEP"], "valid layers are 0..2"),
    (["--feature", "1", "--model", "/no/such/model"], "unknown model '/no/such/model'"),
    (["--feature", "1", "--init-prompt", " ", "--start", "prompt"], "init_prompt is empty"),
    (
        [
            "--feature",
            "1",
            "--init-prompt",
            "The quick brown fox jumps over the lazy dog",
            "--start",
            "prompt",
        ],
        "valid is 3..12",
    ),
    (["--feature", "1", "--min-tokens", "9", "--max-tokens", "4"], "min_tokens=9 > max_tokens=4"),
    (
        [
            "--feature",
            "1",
            "--p-gcg-swap",
            "0",
            "--p-sample-swap",
            "0",
            "--p-sample-insert",
            "0",
            "--p-delete",
            "0",
        ],
        "all zero",
    ),
    (["--feature", "1", "--p-delete", "-0.5"], "p_delete=-0.5"),
    (
        ["--feature", "1", "--xe-max", "0"],
        "xe_max='0' is invalid: valid is a number > 0, pNN with NN in 1..99",
    ),
    (["--feature", "1", "--xe-max", "p101"], "xe_max='p101' is invalid: valid is a number > 0, pNN"),
    (["--feature", "1", "--xe-max", "abc"], "xe_max='abc' is invalid"),
    (
        ["--feature", "1", "--sae", "CTX8", "--max-tokens", "9"],
        "max_tokens=9 exceeds the SAE's context of 8 tokens: valid are 3..8",
    ),
    (["--feature", "1", "--time-budget", "-5"], "time_budget=-5.0"),
    (["--feature", "1", "--objective", "sideways"], "unknown objective 'sideways'"),
    (["--feature", "1", "--reduce", "median"], "unknown reduction 'median'"),
    (["--feature", "1", "--dtype", "float16", "--device", "cpu"], "float16"),
    (["--feature", "1", "--dtype", "int8"], "unknown dtype 'int8'"),
    (["--feature", "1", "--device", "cuda:7"], "not available"),
]


def _ctx_sae(tmp_path, ctx: int) -> str:
    """An identity SAE whose cfg says it was trained on ``ctx``-token windows."""
    import json

    d = identity_sae_dir(tmp_path / f"ctx{ctx}")
    cfg = json.loads((d / "cfg.json").read_text())
    cfg["metadata"]["context_size"] = ctx
    (d / "cfg.json").write_text(json.dumps(cfg))
    return str(d)


@pytest.mark.parametrize("extra,msg", BAD, ids=[m for _, m in BAD])
def test_bad_input_one_line(tiny_dirs, tmp_path, capsys, extra, msg):
    out = tmp_path / "r.json"
    args = dream_args(tiny_dirs, out)
    named = {"WIDE": tiny_dirs["wide"], "DEEP": tiny_dirs["deep"], "CTX8": _ctx_sae(tmp_path, 8)}
    extra = [named.get(e, e) for e in extra]
    # later flags override earlier ones in argparse
    code, cap = run_cli(capsys, args + extra)
    assert code == 2
    err = [ln for ln in cap.err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("featuredream: error:"), cap.err
    assert msg in err[0]
    assert not out.exists()


def test_bad_output_dirs(tiny_dirs, tmp_path, capsys):
    for out in (tmp_path / "missing" / "r.json", "/proc/r.json"):
        code, cap = run_cli(capsys, dream_args(tiny_dirs, out) + ["--feature", "1"])
        assert code == 2 and "output directory" in cap.err and len(cap.err.strip().splitlines()) == 1


def test_corrupted_sae_file(tiny_dirs, tmp_path, capsys):
    bad = identity_sae_dir(tmp_path / "bad")
    (bad / "sae_weights.safetensors").write_bytes(b"not a safetensors file")
    code, cap = run_cli(
        capsys, dream_args(tiny_dirs, tmp_path / "r.json") + ["--feature", "1", "--sae", str(bad)]
    )
    assert code == 2 and "could not be read" in cap.err and len(cap.err.strip().splitlines()) == 1


def test_api_errors_name_the_value(tiny_llama, tmp_path):
    with pytest.raises(ValueError, match="unknown model '/no/such/dir'"):
        load_model("/no/such/dir")
    with pytest.raises(ValueError, match="unknown SAE spec 'nope'"):
        load_sae("nope")
    with pytest.raises(ValueError, match="input width 32"):
        load_sae(identity_sae_dir(tmp_path / "w", d_in=32), model=tiny_llama)
    with pytest.raises(ValueError, match="valid layers are 0..2"):
        load_sae(identity_sae_dir(tmp_path / "d", hook="blocks.9.hook_resid_post"), model=tiny_llama)
    with pytest.raises(ValueError, match="cannot parse hook name"):
        load_sae(identity_sae_dir(tmp_path / "h", hook="blocks.1.hook_resid_middle"), model=tiny_llama)
