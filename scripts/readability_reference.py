"""Make the default model's shipped readability reference (``src/featuredream/data/readability/``): SmolLM2's
surprisal of every token of the 640 prose reference windows (see :mod:`featuredream.text.readability`), float16,
with the model fingerprint and windows digest it came from as metadata (the loader checks both). ~30 s on a
2-core CPU:

    python scripts/readability_reference.py
"""

import logging

import torch
from safetensors.torch import save_file

from featuredream.models.identity import model_fingerprint
from featuredream.models.loading import load_model
from featuredream.text.corpus import windows_digest
from featuredream.text.prose import prose_windows
from featuredream.text.readability import Readability, shipped_path, token_surprisal

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
torch.set_num_threads(2)
model, tok = load_model(None, device="cpu")
windows = prose_windows(tok)
meta = {"model": model_fingerprint(model), "windows_digest": windows_digest(windows)}
table = token_surprisal(model, windows).half()
out = shipped_path()
out.parent.mkdir(parents=True, exist_ok=True)
save_file({"surprisal": table.contiguous()}, str(out), metadata=meta)
r = Readability.from_reference(table.float(), windows)
print(out, meta)
for n in (8, 16, 32):
    print(
        f"{n} tokens: XE median {float(r.xe_median[n]):.2f}, peak p95 {float(r.peak_limit[n]):.2f}, repeats p95 {float(r.repeat_limit[n]):.0f}"
    )
