"""The CLI on tiny models saved to disk: bad input gets one line on stderr and exit 2, no partial files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from featuredream.cli import main


def _identity_sae(path, d_in=64, hook="blocks.1.hook_resid_post"):
    """A 'standard' ReLU SAE with W_enc = [I, -I]: reconstructs any input exactly (FVU 0)."""
    path.mkdir(parents=True, exist_ok=True)
    eye = torch.eye(d_in)
    cfg = {
        "architecture": "standard",
        "d_in": d_in,
        "d_sae": 2 * d_in,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "metadata": {"sae_lens_version": "6.0.0", "model_name": "tiny", "hook_name": hook},
    }
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file(
        {
            "W_enc": torch.cat([eye, -eye], 1).contiguous(),
            "b_enc": torch.zeros(2 * d_in),
            "W_dec": torch.cat([eye, -eye], 0).contiguous(),
            "b_dec": torch.zeros(d_in),
        },
        str(path / "sae_weights.safetensors"),
    )
    return path


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory, tiny_llama, tiny_tokenizer):
    root = tmp_path_factory.mktemp("cli")
    tiny_llama.save_pretrained(root / "model")
    tiny_tokenizer.save_pretrained(root / "model")
    return {
        "model": str(root / "model"),
        "sae": str(_identity_sae(root / "sae")),
        "wide": str(_identity_sae(root / "wide", d_in=32)),
        "deep": str(_identity_sae(root / "deep", hook="blocks.7.hook_resid_post")),
        "root": root,
    }


def _run(capsys, args):
    code = main(args)
    return code, capsys.readouterr()


def _base(d, out):
    return [
        "dream",
        "--model",
        d["model"],
        "--sae",
        d["sae"],
        "--out",
        str(out),
        "--no-progress",
        "--min-tokens",
        "3",
        "--max-tokens",
        "12",
        "--n-children",
        "8",
        "--iters",
        "2",
        "--n-start-samples",
        "2",
    ]


def test_cli_dream_writes_result(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "r.json"
    code, cap = _run(
        capsys, _base(tiny_dirs, out) + ["--feature", "3", "--objective", "decoder", "--reduce", "max"]
    )
    assert code == 0, cap.err
    res = json.loads(out.read_text())
    assert {"text", "activation", "xe"} <= set(res["best"]) and len(res["history"]) == 2
    assert "best prompt" in cap.out


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
    (["--feature", "1", "--xe-max", "0"], "xe_max=0.0"),
    (["--feature", "1", "--time-budget", "-5"], "time_budget=-5.0"),
    (["--feature", "1", "--objective", "sideways"], "unknown objective 'sideways'"),
    (["--feature", "1", "--reduce", "median"], "unknown reduction 'median'"),
    (["--feature", "1", "--dtype", "float16", "--device", "cpu"], "float16"),
    (["--feature", "1", "--dtype", "int8"], "unknown dtype 'int8'"),
    (["--feature", "1", "--device", "cuda:7"], "not available"),
]


@pytest.mark.parametrize("extra,msg", BAD, ids=[m for _, m in BAD])
def test_bad_input_one_line(tiny_dirs, tmp_path, capsys, extra, msg):
    out = tmp_path / "r.json"
    args = _base(tiny_dirs, out)
    extra = [tiny_dirs["wide"] if e == "WIDE" else tiny_dirs["deep"] if e == "DEEP" else e for e in extra]
    # later flags override earlier ones in argparse
    code, cap = _run(capsys, args + extra)
    assert code == 2
    err = [ln for ln in cap.err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("featuredream: error:"), cap.err
    assert msg in err[0]
    assert not out.exists()


def test_bad_output_dirs(tiny_dirs, tmp_path, capsys):
    for out in (tmp_path / "missing" / "r.json", "/proc/r.json"):
        code, cap = _run(capsys, _base(tiny_dirs, out) + ["--feature", "1"])
        assert code == 2 and "output directory" in cap.err and len(cap.err.strip().splitlines()) == 1


def test_corrupted_sae_file(tiny_dirs, tmp_path, capsys):
    bad = _identity_sae(tmp_path / "bad")
    (bad / "sae_weights.safetensors").write_bytes(b"not a safetensors file")
    code, cap = _run(capsys, _base(tiny_dirs, tmp_path / "r.json") + ["--feature", "1", "--sae", str(bad)])
    assert code == 2 and "could not be read" in cap.err and len(cap.err.strip().splitlines()) == 1


def test_subprocess_bad_feature_no_traceback(tiny_dirs, tmp_path):
    cmd = (
        [sys.executable, "-m", "featuredream.cli"]
        + _base(tiny_dirs, tmp_path / "r.json")
        + ["--feature", "abc"]
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "Traceback" not in proc.stderr
