"""The hot loop: candidate token ids -> objective scores, XE and per-token values, and a parent's signals.

``evaluate`` (the :class:`Evaluator`: batched, right-padded, stopping after the objective's layer when XE is
not needed, the cascade, out-of-memory halving; and :func:`reference_evaluate`, the slow and simple path
every reported number is re-scored with), ``prefix_cache`` (children run from their first token that
differs from their parent, on its key/value cache) and ``parent_grads`` (a parent's gradient and next-token
distribution for the mutation operators, K parents in one forward and backward pass).

May import :mod:`featuredream.models` and :mod:`featuredream.objectives` (and what they stand on).
"""

from .evaluate import EvalOutput, Evaluator, reference_evaluate

__all__ = ["EvalOutput", "Evaluator", "reference_evaluate"]
