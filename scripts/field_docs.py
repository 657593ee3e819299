"""Write ``src/featuredream/data/field_docs.json``: the field docstrings of the config dataclasses the CLI
builds its options from (its ``--help``), so the help never reads a source file at run time:

    python scripts/field_docs.py
"""

import json
from pathlib import Path

from featuredream.engine.config import FIELD_DOCS, DreamConfig, source_field_docs
from featuredream.saes.stats import StatsConfig
from featuredream.saes.training import TrainConfig

CLASSES = (DreamConfig, StatsConfig, TrainConfig)

docs = {cls.__name__: source_field_docs(cls) for cls in CLASSES}
out = Path("src/featuredream/data") / FIELD_DOCS
out.write_text(json.dumps(docs, indent=1, sort_keys=True) + "\n")
print(out, {k: len(v) for k, v in docs.items()})
