"""Natural text and what models make of it.

``corpus`` (the offline default corpus, user corpora, token windows and their digest), ``prose`` (the
plain-prose reference held out from SAE training), ``xe_table`` (natural text's XE by length: what
``--xe-max pNN`` reads), ``readability`` (the dreaming model's yardstick of a readable prompt), ``judge`` (the
fluency judge, another model family, never used inside a search) and ``activation_store`` (a site's
activations over the default corpus, and the site's norm cap).

May import :mod:`featuredream.models`; nothing above it.
"""

from .corpus import default_corpus, load_corpus
from .judge import FluencyJudge, JudgeScore
from .prose import prose_documents

__all__ = ["FluencyJudge", "JudgeScore", "default_corpus", "load_corpus", "prose_documents"]
