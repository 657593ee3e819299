"""Dream three features of the default SAE and print each next to its top dataset examples.

    python examples/dream_three_features.py [--budget 30] [--features 10,20,30]

A copyable starting point: load the embedded model and shipped SAE, pick live features, dream each under
a fluency ceiling, and compare the dream with what fires the feature in the corpus.
"""

import argparse

from featuredream import DreamConfig, SAEEncoder, dream, load_model, load_sae

ap = argparse.ArgumentParser()
ap.add_argument("--budget", type=float, default=30.0, help="seconds per feature")
ap.add_argument("--features", default=None, help="comma-separated latents (default: 3 live ones)")
ap.add_argument("--xe-max", type=float, default=6.0)
args = ap.parse_args()

model, tok = load_model()
sae = load_sae("default", model=model)
if args.features:
    features = [int(f) for f in args.features.split(",")]
else:
    live = sae.stats.live_latents()
    features = [int(live[i]) for i in (0, len(live) // 2, len(live) - 1)]

for feature in features:
    objective = SAEEncoder(sae, feature)
    result = dream(
        model, tok, objective, DreamConfig(time_budget=args.budget, xe_max=args.xe_max, progress=False)
    )
    print(f"\n=== feature {feature} ===")
    print(
        f"dream   {result.best.activation:7.2f}  XE {result.best.xe:4.2f}  ratio {result.ratio:.2f}  {result.best.text!r}"
    )
    for toks, pos, _acts, value in sae.stats.examples(feature)[:3]:
        before, token = tok.decode(toks[max(0, pos - 12) : pos]), tok.decode(toks[pos : pos + 1])
        print(f"dataset {value:7.2f}            ...{before}[[{token}]]")
