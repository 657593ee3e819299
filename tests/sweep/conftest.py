"""The sweep tests' fixture: the tiny model on disk and an identity SAE with dataset maxima."""

from __future__ import annotations

import pytest
import torch
from helpers.saes import identity_sae_dir
from safetensors.torch import save_file


@pytest.fixture(scope="session")
def sweep_dirs(tiny_dirs, tmp_path_factory):
    """The tiny model on disk and an identity SAE with per-latent dataset maxima (so ratios exist)."""
    root = tmp_path_factory.mktemp("sweep")
    sae = identity_sae_dir(root / "sae")
    stats = {
        "max_activation": torch.linspace(0.5, 2.0, 128),
        "fire_rate": torch.full((128,), 0.1),
        "top_tokens": torch.full((128, 1, 4), -1),  # no top examples (top_pos -1)
        "top_acts": torch.zeros(128, 1, 4),
        "top_pos": torch.full((128, 1), -1),
        "top_values": torch.zeros(128, 1),
    }
    save_file(stats, str(sae / "features.safetensors"))
    return {"model": tiny_dirs["model"], "sae": str(sae), "root": root}
