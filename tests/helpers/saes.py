"""Test inputs written to disk or shared as constants: fixture text, random and exact sae-lens SAE dirs."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file

TEXT = (
    "The quick brown fox jumps over the lazy dog. To be, or not to be, that is the question. "
    "Whether 'tis nobler in the mind to suffer the slings and arrows of outrageous fortune. "
    "def parse(text): return json.loads(text) if text else None. The capital of France is Paris. "
    "Once upon a time there was a little girl who lived in a village near the forest. "
) * 4

GEMMA3_WINDOW = 4


def write_sae_dir(
    path,
    d_in: int = 64,
    d_sae: int = 128,
    hook: str = "blocks.1.hook_resid_post",
    head=None,
    seed=0,
    arch: str = "topk",
    stats: dict | None = None,
):
    """A random sae-lens SAE directory (cfg.json + sae_weights.safetensors)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    cfg = {
        "architecture": arch,
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "metadata": {
            "sae_lens_version": "6.0.0",
            "model_name": "tiny",
            "hook_name": hook,
            "hook_head_index": head,
        },
    }
    if arch == "topk":
        cfg["k"] = 8
    (path / "cfg.json").write_text(json.dumps(cfg))
    w = {
        "W_enc": torch.randn(d_in, d_sae, generator=g) / d_in**0.5,
        "b_enc": torch.randn(d_sae, generator=g) * 0.1,
        "W_dec": torch.randn(d_sae, d_in, generator=g) / d_sae**0.5,
        "b_dec": torch.randn(d_in, generator=g) * 0.1,
    }
    if arch == "jumprelu":
        w["threshold"] = torch.zeros(d_sae)
    save_file(w, str(path / "sae_weights.safetensors"))
    if stats is not None:
        (path / "stats.json").write_text(json.dumps(stats))
    return path


def identity_sae_dir(path, d_in=64, hook="blocks.1.hook_resid_post", head=None):
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
        "metadata": {
            "sae_lens_version": "6.0.0",
            "model_name": "tiny",
            "hook_name": hook,
            "hook_head_index": head,
        },
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
