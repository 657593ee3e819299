"""Remake the shipped SAEs' statistics from their weights as shipped (the weights are not retrained), with
the same pass as ``featuredream stats`` on the offline default corpus:

    python scripts/regenerate_statistics.py [SAE_DIR ...]     # default: both shipped SAEs

Each SAE's windows are those of its recipe (``stats.json``'s ``train_config``: tokens, held-out tokens,
context, seed), its norm cap the recorded one; ``features.safetensors`` and the statistics part of
``stats.json`` are rewritten (the training record is kept). Then every latent's best example is scored
**alone** from its stored tokens and the worst relative error printed (the test suite repeats this check,
and ``tests/lm/test_stats_pass.py`` recomputes the residual SAE's statistics and compares). ~10 min on a
2-core CPU.
"""

import json
import logging
import sys
from pathlib import Path

import torch

from featuredream.models.loading import DEFAULT_MODEL, load_model
from featuredream.saes.loading import load_sae
from featuredream.saes.stats import StatsInputs, compute_statistics, shipped_config, verify_examples
from featuredream.text.corpus import default_corpus

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
torch.set_num_threads(2)
root = Path("src/featuredream/data/saes/")
dirs = [Path(d) for d in sys.argv[1:]] or [root / "smollm2-res12", root / "smollm2-q18h6"]
model, tok = load_model(None, device="cpu", dtype="float32")
docs = default_corpus()
for d in dirs:
    sae = load_sae(str(d), model=model, stats_dir=str(d))  # the shipped files, never a cached pass
    cfg = shipped_config(json.loads((d / "stats.json").read_text()))
    inp = StatsInputs(model, tok, sae, docs, "default", DEFAULT_MODEL, f"fixture:{d.name}")
    stats = compute_statistics(inp, cfg, d)
    print(d, {k: stats.info[k] for k in ("positions", "dead_fraction", "windows_digest", "seconds")})
    sae = load_sae(str(d), model=model, stats_dir=str(d))  # the shipped files, never a cached pass
    pairs = [(lat, 0) for lat in range(sae.d_sae) if int(sae.stats.top_pos[lat, 0]) >= 0]
    err = verify_examples(model, sae, pairs)
    print(
        f"{d}: best example of {len(pairs)} latents scored alone: max relative error {float(err.max()):.2e}"
    )
