"""Recompute the shipped SAEs' statistics from their weights as shipped (the weights are not retrained):

    python scripts/regenerate_statistics.py [SAE_DIR ...]     # default: both shipped SAEs

Takes the training windows the recipe in each ``stats.json`` picks (seed 0) from the offline corpus,
captures the site, and writes ``features.safetensors`` (maxima, fire rates, top examples with their whole
context, the natural-text XE table) and ``stats.json`` (held-out FVU measured now, ``windows_digest``).
Then scores every latent's best example **alone** from its stored tokens and prints the worst relative
error (the test suite repeats this check). ~10 min on a 2-core CPU.
"""

import logging
import sys

from featuredream.lm.corpus import default_corpus
from featuredream.lm.models import load_model
from featuredream.lm.sae_stats import verify_examples
from featuredream.lm.saes import load_sae
from featuredream.lm.train_sae import recompute_statistics

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
root = "src/featuredream/data/saes/"
dirs = sys.argv[1:] or [root + "smollm2-res12", root + "smollm2-q18h6"]
model, tok = load_model(None, device="cpu", dtype="float32")
docs = default_corpus()
for d in dirs:
    stats = recompute_statistics(model, tok, docs, d)
    print(
        d, {k: stats[k] for k in ("fvu_heldout", "fvu_heldout_recomputed", "dead_fraction", "windows_digest")}
    )
    sae = load_sae(d, model=model)
    pairs = [(lat, 0) for lat in range(sae.d_sae) if int(sae.stats.top_pos[lat, 0]) >= 0]
    err = verify_examples(model, sae, pairs)
    print(
        f"{d}: best example of {len(pairs)} latents scored alone: max relative error {float(err.max()):.2e}"
    )
