#!/usr/bin/env bash
# Reproduce both shipped SAEs of the default model from the offline corpus (seed 0, 2-core CPU times).
#   smollm2-res12 : residual stream after layer 12, 2304 latents, TopK 64        (~25 min)
#   smollm2-q18h6 : queries of layer 18, head 6 (the strongest induction head,
#                   see scripts/choose_query_head.py), 1024 latents, TopK 16      (~10 min)
set -euo pipefail
cd "$(dirname "$0")/.."
python scripts/train_default_sae.py src/featuredream/data/saes/smollm2-res12
python scripts/train_default_sae.py src/featuredream/data/saes/smollm2-q18h6 \
    site=attn_q:18:6 d_sae=1024 k=16 train_tokens=300000
