"""``DreamConfig``: every knob of the optimizer, with a docstring and a default; validated on creation."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from ..checks import check_int
from .fluency import parse_xe_max

STARTS = ("auto", "prompt", "dataset", "samples")
GOALS = ("readable", "max")
READABLE_REFERENCES = ("prose", "example")
MAX_DREAMS = 16
"""``dreams`` at most: the readable lane holds that many prompts, each a parent in turn."""
DEFAULT_LADDER = ("p50", "p75", "p90", None)
"""The CLI's fluency ladder (``--ladder``): the most activating prompt at each of these ceilings."""


@dataclass(frozen=True)
class DreamConfig:
    """Configuration of :func:`featuredream.dream` (published feature-dreaming defaults plus budgets, starts, Pareto, ladder)."""

    iters: int = 200
    """Maximum iterations (one parent, ``n_children`` children each)."""
    time_budget: float | None = None
    """Wall-clock budget in seconds (None: no limit) for the search: the start pool, the iterations and the
    verification of the results; the search stops when one more iteration and the verification would
    overrun it. One-time costs cached for later runs come before it and are printed on their own (building a
    site's activation store, measuring its norm cap, the XE table, loading the judge); the judge's scoring
    of the results (about a second) comes after it."""
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
    goal: str = "readable"
    """What the headline (``best``) is. 'readable': the most readable prompt whose activation reaches
    ``floor`` (lowest XE above natural text of its length, no token far more surprising than natural text
    shows, no degenerate repetition: featuredream.text.readability), or the most activating prompt under the
    ceiling when nothing reached the floor; 'max': always the most activating prompt under the ceiling."""
    floor: float | str | None = "1.0x"
    """The activation a readable headline must reach: 'Nx' is N times the feature's dataset maximum (its
    statistics or a corpus scan), a number is that activation. Without a known maximum a ratio floor falls
    back to the most activating prompt (said once)."""
    dreams: int = 1
    """Distinct dreams to return (DreamResult.dreams), each the most readable above the floor that was
    found; no two share more than ``distinct_overlap`` of their tokens."""
    distinct_overlap: float = 0.5
    """Two prompts are distinct when at most this share of the shorter one's distinct tokens occur in the
    other."""
    readable_share: float = 0.5
    """Once a prompt reaches the floor, the share of iterations whose parent comes from the readable lane
    (the others keep climbing activation, for the ladder and for the lane)."""
    readable_xe_weight: float = 3.0
    """The XE weight of a readable-lane parent's gradient, so GCG proposes swaps that lower XE."""
    readable_reference: str = "prose"
    """What a readable prompt's XE is compared with at its own length: 'prose' (the median XE of natural prose
    of that length) or 'example' (the XE of the feature's best dataset example cut to that length: 'more
    readable than the best example'; prose without one). Only the dreaming model's XE, never the judge's."""
    head_trims: bool = True
    """A readable-lane parent also gets the children without its first 1..4 tokens (a fragment of a word
    left from a dataset window's cut opens many prompts)."""
    surprisal_guard: bool = True
    """Rank a prompt with a token more surprising than the 95th percentile of natural text's most
    surprising token at that length after every prompt without one (readable goal)."""
    repetition_guard: bool = True
    """Rank a prompt with more repeated bigrams and immediate repeats than the 95th percentile of natural
    text of that length after every prompt without (readable goal)."""
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
            object.__setattr__(self, "pareto", tuple(float(p) for p in self.pareto))
        if self.ladder is not None:
            if isinstance(self.ladder, str) or not self.ladder:
                raise bad("ladder", "a non-empty list of ceilings (numbers, pNN or none)")
            object.__setattr__(self, "ladder", tuple(parse_xe_max(c) for c in self.ladder))
        self._check_readable(bad)
        if self.patience is not None and self.patience < 1:
            raise bad("patience", "an integer >= 1 (or None)")
        if self.restarts < 0:
            raise bad("restarts", "an integer >= 0")

    def _check_readable(self, bad) -> None:
        """The readable goal's fields (``bad(name, valid)`` makes the error)."""
        if self.readable_reference not in READABLE_REFERENCES:
            raise bad("readable_reference", "one of " + ", ".join(READABLE_REFERENCES))
        if self.goal not in GOALS:
            raise bad("goal", "one of " + ", ".join(GOALS))
        object.__setattr__(self, "floor", parse_floor(self.floor))
        if (
            isinstance(self.dreams, bool)
            or not isinstance(self.dreams, int)
            or not 1 <= self.dreams <= MAX_DREAMS
        ):
            raise bad("dreams", f"an integer in 1..{MAX_DREAMS} (what the readable lane holds)")
        for name in ("distinct_overlap", "readable_share"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and 0 <= v <= 1):
                raise bad(name, "a number in [0, 1]")
        if not (isinstance(self.readable_xe_weight, int | float) and 0 <= self.readable_xe_weight < math.inf):
            raise bad("readable_xe_weight", "a finite number >= 0")

    @property
    def needs_xe(self) -> bool:
        """XE must be computed for every candidate (a fluency term, the frontier, the ladder or the readable
        goal is in use)."""
        return (
            self.xe_max is not None
            or self.xe_regularization > 0
            or self.pareto is not None
            or self.ladder is not None
            or self.readable
        )

    @property
    def readable(self) -> bool:
        """The headline is the most readable prompt above a floor (``goal='readable'`` with a floor)."""
        return self.goal == "readable" and self.floor is not None

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


FLOOR_VALID = "a positive ratio of the dataset maximum like 1.0x, a number (an activation), or none"


def parse_floor(value: object) -> float | str | None:
    """``floor`` as given -> ``'Nx'`` (normalized, N > 0), a float, or None; ValueError naming the value
    and the valid forms otherwise."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "off")):
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        try:
            if text.endswith("x"):
                ratio = float(text[:-1])
                if not (math.isfinite(ratio) and ratio > 0):
                    raise ValueError
                return f"{ratio:g}x"
            value = float(text)
        except ValueError:
            raise ValueError(f"floor={value!r} is invalid: valid is {FLOOR_VALID}") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"floor={value!r} is invalid: valid is {FLOOR_VALID}")
    return float(value)


def floor_value(floor: float | str | None, dataset_max: float | None) -> float | None:
    """The activation a ``floor`` (parsed) asks for, given the feature's dataset maximum (None: no floor
    can be set: no floor given, or a ratio floor without a positive maximum)."""
    if floor is None:
        return None
    if isinstance(floor, str):
        if dataset_max is None or not dataset_max > 0:
            return None
        return float(floor[:-1]) * dataset_max
    return float(floor)


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
            docs[a.target.id] = plain_text(" ".join(str(b.value.value).split()))
    return docs


def plain_text(doc: str) -> str:
    """A docstring as ``--help`` shows it: reST roles reduced to their target (``:func:`~.a.b``` -> ``b``,
    ``:mod:`x.y``` -> ``x.y``) and inline literals to their text (````x```` -> ``x``)."""
    import re

    def role(m: re.Match) -> str:
        tilde, target = m.group(1), m.group(2)
        return target.rsplit(".", 1)[-1] if tilde else target.lstrip(".")

    doc = re.sub(r":[a-z]+:`(~?)([^`]+)`", role, doc)
    return re.sub(r"``([^`]+)``", r"\1", doc)


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
