"""The site check on an SAE that really was fitted to one site (identity SAEs reconstruct any site, so they
never exercise a refusal): a least-squares (PCA) SAE of 24 of the 64 directions of blocks.1.hook_resid_post
is accepted there, refused where it reconstructs poorly (one line naming the site and its FVU), refused at
the off-by-one site, and the CLI refuses it with one line and a non-zero exit."""

from __future__ import annotations

import re

import pytest
import torch
from helpers.cli import run_cli
from helpers.saes import write_sae_dir
from safetensors.torch import save_file

from featuredream import load_sae
from featuredream.saes.check import CHECK_TEXTS, check_site

FIT_TEXT = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
    "foolishness. Call me Ishmael. Some years ago, never mind how long precisely, having little or no money "
    "in my purse, I thought I would sail about a little. import os; print(os.getcwd()) # where am I?"
)


@pytest.fixture(scope="module")
def fitted(tiny_llama, tiny_tokenizer):
    """Mean and top-24 principal directions of resid_post 1 over text and random tokens (not CHECK_TEXTS)."""
    ids = torch.tensor([tiny_tokenizer(FIT_TEXT, add_special_tokens=False)["input_ids"]])
    rnd = torch.randint(1, len(tiny_tokenizer), (8, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = torch.cat(
            [
                tiny_llama(input_ids=b, output_hidden_states=True).hidden_states[2].reshape(-1, 64)
                for b in (ids, rnd)
            ]
        )
    mean = x.mean(0)
    basis = torch.linalg.svd(x - mean, full_matrices=False)[2][:24]
    return mean, basis


def _sae_dir(path, fitted, hook):
    """A 'standard' ReLU SAE [B, -B]: reconstructs the projection on the fitted 24-dim subspace."""
    mean, basis = fitted
    write_sae_dir(path, d_in=64, d_sae=48, hook=hook, arch="standard")
    both = torch.cat([basis, -basis])
    save_file(
        {"W_enc": both.T.contiguous(), "b_enc": torch.zeros(48), "W_dec": both.contiguous(), "b_dec": mean},
        str(path / "sae_weights.safetensors"),
    )
    return path


def _fvu_by_hand(model, tok, fitted, module_output):
    """FVU on CHECK_TEXTS of activations read by a plain forward hook (3x-median norm cap, as documented)."""
    mean, basis = fitted
    got = []
    h = module_output(model).register_forward_hook(
        lambda m, a, o: got.append(o[0] if isinstance(o, tuple) else o)
    )
    try:
        with torch.no_grad():
            for t in CHECK_TEXTS:
                model(input_ids=torch.tensor([tok(t, add_special_tokens=False)["input_ids"]]))
    finally:
        h.remove()
    x = torch.cat([g.reshape(-1, 64).float() for g in got])
    x = x[x.norm(dim=-1) <= 3 * x.norm(dim=-1).median()]
    both = torch.cat([basis, -basis])
    recon = torch.relu((x - mean) @ both.T) @ both + mean
    return float((x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def test_fitted_sae_is_accepted_at_its_own_site(tiny_llama, tiny_tokenizer, fitted, tmp_path, one_thread):
    sae = load_sae(_sae_dir(tmp_path / "own", fitted, "blocks.1.hook_resid_post"), model=tiny_llama)
    fvu = check_site(tiny_llama, tiny_tokenizer, sae)
    want = _fvu_by_hand(tiny_llama, tiny_tokenizer, fitted, lambda m: m.model.layers[1])  # resid_post 1
    assert fvu == pytest.approx(want, rel=1e-4) and fvu < 0.5


def test_fitted_sae_is_refused_where_it_reconstructs_poorly(
    tiny_llama, tiny_tokenizer, fitted, tmp_path, one_thread
):
    # the MLP output of the same layer has no adjacent site to compare with: only the FVU bound can refuse
    sae = load_sae(_sae_dir(tmp_path / "mlp", fitted, "blocks.1.hook_mlp_out"), model=tiny_llama)
    with pytest.raises(ValueError) as e:
        check_site(tiny_llama, tiny_tokenizer, sae)
    msg = str(e.value)
    assert "\n" not in msg
    m = re.search(
        r"reconstructs poorly at its declared site blocks\.1\.hook_mlp_out \(FVU ([0-9.]+) > 0\.5\)", msg
    )
    assert m, msg
    want = _fvu_by_hand(tiny_llama, tiny_tokenizer, fitted, lambda m: m.model.layers[1].mlp)
    assert want > 0.5 and float(m.group(1)) == pytest.approx(want, abs=0.006)  # printed with 2 decimals


def test_fitted_sae_is_refused_at_the_off_by_one_site(
    tiny_llama, tiny_tokenizer, fitted, tmp_path, one_thread
):
    """Declared one layer late: blocks.2.hook_resid_pre (= blocks.1.hook_resid_post) reconstructs better."""
    sae = load_sae(_sae_dir(tmp_path / "late", fitted, "blocks.2.hook_resid_post"), model=tiny_llama)
    with pytest.raises(ValueError, match=r"declared at .* reconstructs better at blocks\.2\.hook_resid_pre"):
        check_site(tiny_llama, tiny_tokenizer, sae)


@pytest.mark.parametrize("command", ["score", "dream"])
def test_cli_refuses_an_sae_read_at_the_wrong_site(
    tiny_dirs, tiny_llama, fitted, tmp_path, capsys, command, one_thread
):
    bad = _sae_dir(tmp_path / "mlp", fitted, "blocks.1.hook_mlp_out")
    out = tmp_path / "r.json"
    args = ["--model", tiny_dirs["model"], "--sae", str(bad), "--feature", "0"]
    args = [
        command,
        *args,
        *(["--out", str(out), "--iters", "1", "--no-progress"] if command == "dream" else ["To be"]),
    ]
    code, cap = run_cli(capsys, args)
    err = [ln for ln in cap.err.splitlines() if ln.strip()]
    assert code != 0 and len(err) == 1, cap.err
    assert "blocks.1.hook_mlp_out" in err[0] and re.search(r"FVU [0-9.]+", err[0]), err[0]
    assert "Traceback" not in cap.err and not out.exists()
    good = _sae_dir(tmp_path / "own", fitted, "blocks.1.hook_resid_post")
    code, cap = run_cli(
        capsys, ["score", "--model", tiny_dirs["model"], "--sae", str(good), "--feature", "0", "To be"]
    )
    assert code == 0, cap.err


def test_exact_sae_with_a_decoder_bias_is_accepted(tiny_llama, tiny_tokenizer, tmp_path):
    """An exact SAE (identity with a non-zero b_dec) reconstructs every site to FVU ~1e-7; float noise
    between two such near-zero FVUs must not read as 'reconstructs better elsewhere'."""
    from helpers.saes import identity_sae_dir
    from safetensors.torch import load_file

    path = identity_sae_dir(tmp_path / "sae")
    w = load_file(str(path / "sae_weights.safetensors"))
    w["b_dec"] = torch.linspace(-0.5, 0.5, 64)
    save_file(w, str(path / "sae_weights.safetensors"))
    assert check_site(tiny_llama, tiny_tokenizer, load_sae(str(path), model=tiny_llama)) < 1e-4
