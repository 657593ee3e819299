"""Make the default fluency judge's shipped reference (``src/featuredream/data/judges/``): Gemma 3 270M's
prefix XE of the 640 prose reference windows (see :mod:`featuredream.text.judge`), with the model fingerprint
and windows digest it came from as metadata (the loader checks both). ~4 min on a 2-core CPU:

    python scripts/judge_reference.py
"""

import logging
from pathlib import Path

import torch
from safetensors.torch import save_file

from featuredream.models.identity import model_fingerprint
from featuredream.models.loading import load_model
from featuredream.text.corpus import windows_digest
from featuredream.text.judge import DEFAULT_JUDGE, SHIPPED
from featuredream.text.prose import prose_windows
from featuredream.text.xe_table import prefix_xe

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
torch.set_num_threads(2)
model, tok = load_model(DEFAULT_JUDGE, device="cpu", dtype="float32")
windows = prose_windows(tok)
meta = {"model": model_fingerprint(model), "windows_digest": windows_digest(windows)}
table = prefix_xe(model, windows, batch=16, desc="judge reference")
out = Path("src/featuredream/data/judges") / SHIPPED[DEFAULT_JUDGE]
out.parent.mkdir(parents=True, exist_ok=True)
save_file({"prefix_xe": table.contiguous()}, str(out), metadata=meta)
q = torch.quantile(table[:, 14].double(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.double))
print(out, meta, "16-token XE p10/p50/p90:", [round(float(v), 3) for v in q])
