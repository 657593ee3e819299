"""``DreamConfig``: every knob of the optimizer, with a docstring and a default; validated on creation."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from ..checks import check_int
from .fluency import parse_xe_max

STARTS = ("auto", "prompt", "dataset", "samples")
DEFAULT_LADDER = ("p50", "p75", "p90", None)
"""The CLI's fluency ladder (``--ladder``): the most activating prompt at each of these ceilings."""


@dataclass(frozen=True)
class DreamConfig:
    """Configuration of :func:`featuredream.dream` (published feature-dreaming defaults plus budgets, starts, Pareto, ladder)."""

    iters: int = 200
    """Maximum iterations (one parent, ``n_children`` children each)."""
    time_budget: float | None = None
    """Wall-clock budget in seconds (None: no limit)."""
    seed: int = 0
    """Seed of every random choice; the same seed on the same device gives the same result."""
    init_prompt: str | None = None
    """A prompt to start from (used by ``start='prompt'`` and added to the pool by ``'auto'``)."""
    start: str = "auto"
    """Where to start: 'prompt', 'dataset' (top dataset examples ending at the activating token: the SAE's
    statistics, or a scan of the corpus for any other objective), 'samples' (model samples only: a cold
    start, see ``cold_samples``), or 'auto' (all available, best kept)."""
    min_tokens: int = 8
    """Minimum prompt length in tokens."""
    max_tokens: int = 16
    """Maximum prompt length in tokens."""
    buffer_size: int = 4
    """Prompts kept in the buffer (parents are taken from it in turn)."""
    n_children: int | None = None
    """Children evaluated per iteration; None: 128 on a GPU, 64 on a CPU (64 with the prefix
    cache beat 16 and 32 at equal time on the tuning latents; benchmarks/README.md, "Tuning")."""
    p_gcg_swap: float = 0.25
    """Share of children made by GCG swaps (gradient top-k)."""
    p_sample_swap: float = 0.25
    """Share made by swaps sampled from the model's next-token distribution."""
    p_sample_insert: float = 0.25
    """Share made by sampled inserts."""
    p_delete: float = 0.25
    """Share made by deletes."""
    sample_k2: int = 16
    """Tokens sampled (without replacement) per position for sampled operators."""
    top_p: float = 0.9
    """Sampled swaps and inserts draw only from the nucleus: the smallest set of most probable next tokens
    holding this much probability (1.0: the whole distribution). 0.9 raised the median ratio at p50 from
    1.21 to 1.29 on the tuning latents at equal time (benchmarks/tune_readable.json)."""
    gcg_topk: int = 512
    """GCG picks among the top-k tokens by gradient per position."""
    gcg_fluency: float = 1.0
    """Weight of the model's log-probability of a token in place when ranking GCG candidates (gradient
    standardized per position; 1.0 raised the mean ratio at equal time on the tuning latents); 0: plain
    GCG."""
    xe_max: float | str | None = None
    """Hard fluency ceiling: prompts with XE above it are infeasible (still ranked by how far above). A
    number is one ceiling for every length; 'pNN' (e.g. 'p90') is that percentile of natural text's XE at
    each prompt's own length, from the table in the SAE's statistics, else the model's own table on the
    default corpus. None: no ceiling."""
    xe_regularization: float = 0.0
    """Fluency penalty lambda: loss = -activation + lambda * XE."""
    pareto: tuple[float, ...] | None = None
    """Extra penalties (e.g. 8 values log-spaced 0.1..10) each keeping its own buffer slot (EPO-style)."""
    ladder: tuple[float | str | None, ...] | None = None
    """A fluency ladder: ceilings (each an ``xe_max`` form, e.g. ``("p50", "p75", "p90", None)``) at each of
    which the result also reports the most activating prompt found (``DreamResult.ladder``). Each rung keeps
    its best in its own buffer slot, so rungs share the iteration's children and parents (as ``pareto``
    does); a looser rung's activation is never below a stricter one's. None: no ladder."""
    patience: int | None = 60
    """Iterations without improvement of the best loss before a restart (or stop); None: never."""
    restarts: int = 0
    """Restarts from the next unused start after ``patience`` runs out."""
    cascade: bool = True
    """Score children up to the objective's layer first and finish the forward pass (for XE) only for
    those whose activation could enter the buffer (exact: XE >= 0 bounds the loss)."""
    prefix_cache: bool = True
    """Run each parent once with a key/value cache and each child only from its first token that differs
    from the parent (same scores and XE to ~1e-6; benchmarks/prefix_cache.py). Used for batches of at
    least ``prefix_cache.PREFIX_MIN_CHILDREN`` fresh children per iteration (48 on CPU: smaller ones measured
    slower)."""
    batch_size: int = 256
    """Candidates per forward pass (halves automatically on out-of-memory)."""
    n_start_samples: int = 8
    """Model samples added to the start pool by 'samples' / 'auto'."""
    cold_samples: int = 256
    """Without dataset examples (``start='samples'``, a cold start): model samples of ``max_tokens`` tokens
    scanned in one pass for each one's best prefix; the ``n_start_samples`` best enter the pool cut there
    (0: plain samples only). 256 beat 128 and 384 on the tuning latents at 60 s
    (benchmarks/tune_cold_fast.json)."""
    progress: bool = True
    """Show a tqdm progress bar."""

    def __post_init__(self) -> None:
        def bad(name: str, valid: str) -> ValueError:
            return ValueError(f"{name}={getattr(self, name)!r} is invalid: valid is {valid}")

        names = ["iters", "min_tokens", "max_tokens", "buffer_size", "sample_k2", "gcg_topk", "batch_size"]
        for name in names + (["n_children"] if self.n_children is not None else []):
            check_int(name, getattr(self, name))
        check_int("min_tokens", self.min_tokens, 2)
        check_int("n_start_samples", self.n_start_samples, 0)
        check_int("cold_samples", self.cold_samples, 0)
        if self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens={self.min_tokens} > max_tokens={self.max_tokens}: valid is min_tokens <= max_tokens"
            )
        probs = [self.p_gcg_swap, self.p_sample_swap, self.p_sample_insert, self.p_delete]
        for name, p in zip(("p_gcg_swap", "p_sample_swap", "p_sample_insert", "p_delete"), probs):
            if not isinstance(p, int | float) or not math.isfinite(p) or p < 0:
                raise bad(name, "a finite number >= 0")
        if sum(probs) <= 0:
            raise ValueError(
                "operator probabilities are all zero: valid is at least one of p_gcg_swap, "
                "p_sample_swap, p_sample_insert, p_delete > 0"
            )
        object.__setattr__(self, "xe_max", parse_xe_max(self.xe_max))
        if not (
            isinstance(self.gcg_fluency, int | float)
            and math.isfinite(self.gcg_fluency)
            and self.gcg_fluency >= 0
        ):
            raise bad("gcg_fluency", "a finite number >= 0")
        if not (isinstance(self.top_p, int | float) and 0 < self.top_p <= 1):
            raise bad("top_p", "a number in (0, 1]")
        if not (math.isfinite(self.xe_regularization) and self.xe_regularization >= 0):
            raise bad("xe_regularization", "a number >= 0")
        if self.time_budget is not None and not (self.time_budget > 0):
            raise bad("time_budget", "a number of seconds > 0 (or None)")
        if self.start not in STARTS:
            raise bad("start", "one of " + ", ".join(STARTS))
        if self.start == "prompt" and not self.init_prompt:
            raise ValueError("start='prompt' needs init_prompt: valid is a non-empty prompt")
        if self.init_prompt is not None and not self.init_prompt.strip():
            raise ValueError("init_prompt is empty: valid is a non-empty prompt (or None)")
        if self.pareto is not None:
            if not self.pareto or any(not (math.isfinite(p) and p >= 0) for p in self.pareto):
                raise bad("pareto", "a non-empty list of penalties >= 0")
        if self.ladder is not None:
            if isinstance(self.ladder, str) or not self.ladder:
                raise bad("ladder", "a non-empty list of ceilings (numbers, pNN or none)")
            object.__setattr__(self, "ladder", tuple(parse_xe_max(c) for c in self.ladder))
        if self.patience is not None and self.patience < 1:
            raise bad("patience", "an integer >= 1 (or None)")
        if self.restarts < 0:
            raise bad("restarts", "an integer >= 0")

    @property
    def needs_xe(self) -> bool:
        """XE must be computed for every candidate (a fluency term or the frontier is in use)."""
        return (
            self.xe_max is not None
            or self.xe_regularization > 0
            or self.pareto is not None
            or self.ladder is not None
        )

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


FIELD_DOCS = "field_docs.json"
"""Shipped beside the package data: each config dataclass's field docstrings, read by the CLI help
(``scripts/field_docs.py`` writes it from the sources; ``tests/cli/test_cli.py`` checks it is current)."""


def field_docs(cls) -> dict[str, str]:
    """Field name -> the docstring under it in the dataclass ``cls`` (the CLI help), from the shipped
    :data:`FIELD_DOCS` (no source file is read: an installation without sources has the same help)."""
    import json
    from importlib import resources

    docs = json.loads((resources.files("featuredream") / "data" / FIELD_DOCS).read_text())
    return docs.get(cls.__name__, {})


def source_field_docs(cls) -> dict[str, str]:
    """Field name -> the docstring under it in ``cls``'s source (what :data:`FIELD_DOCS` ships)."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for a, b in zip(body, body[1:]):
        if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
            docs[a.target.id] = " ".join(str(b.value.value).split())
    return docs


def log_penalties(lo: float = 0.1, hi: float = 10.0, n: int = 8) -> tuple[float, ...]:
    """``n`` penalties log-spaced from ``lo`` to ``hi`` (the default Pareto sweep)."""
    if n == 1:
        return (lo,)
    return tuple(lo * (hi / lo) ** (i / (n - 1)) for i in range(n))


def default_children(device_type: str) -> int:
    """``DreamConfig.n_children=None`` on a device: 128 on a GPU, 64 on a CPU (at equal time on the 2-core
    CPU, 64 children with the prefix cache beat 16 and 32 on the tuning latents: benchmarks/README.md,
    "Tuning")."""
    return 128 if device_type == "cuda" else 64
