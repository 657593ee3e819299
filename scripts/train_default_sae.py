"""Reproduce the shipped default SAE: `python scripts/train_default_sae.py [OUT_DIR] [key=value ...]`.

Same as `featuredream train-sae`; defaults are TrainConfig's (layer-12 resid_post of SmolLM2-135M-Instruct,
2304 latents, TopK 64, 600k tokens of the offline corpus, seed 0). Takes ~30 min on a 2-core CPU
(capture ~12 min, training ~15 min); `acts_cache=/tmp/acts.safetensors` reuses captured activations.
"""

import logging
import sys
from dataclasses import fields

from featuredream.models.loading import DEFAULT_MODEL, load_model
from featuredream.saes.training import TrainConfig, train_sae
from featuredream.text.corpus import default_corpus

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
out = sys.argv[1] if len(sys.argv) > 1 else "src/featuredream/data/saes/smollm2-res12"
types = {f.name: f.type for f in fields(TrainConfig)}
kw = {}
cache = None
for arg in sys.argv[2:]:
    k, v = arg.split("=", 1)
    if k == "acts_cache":
        cache = v
        continue
    kw[k] = {"int": int, "float": float, "str": str}[types[k]](v)
cfg = TrainConfig(**kw)
model, tok = load_model(None, device="cpu", dtype="float32")
print(train_sae(model, tok, default_corpus(), cfg, out, model_name=DEFAULT_MODEL, acts_cache=cache))
