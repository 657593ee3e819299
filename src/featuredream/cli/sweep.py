"""``featuredream sweep`` and ``featuredream sweep-summary``.

``register(subparsers)`` adds the two commands to the main parser; ``COMMANDS`` maps them to their
handlers, which raise ``ValueError`` for bad input (``featuredream.cli.main`` prints one line, exit 2).
(``dream --features``, several features in one run without a store, is in :mod:`featuredream.cli.dream`.)
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from .options import (
    add_config_options,
    add_judge_option,
    add_model_options,
    config_for_sae_files,
    int_at_least,
)

log = logging.getLogger(__name__)


def register(sub) -> None:
    """Add ``sweep`` and ``sweep-summary`` to the ``sub`` subparsers of the main parser."""
    from ..engine.config import DreamConfig
    from ..sweep.run import BACKENDS

    positive, count = int_at_least(1), int_at_least(0)
    s = sub.add_parser(
        "sweep",
        help="dream every feature of a range into a resumable store (one record per feature)",
        description="Dream every feature of a range, K at a time, into DIR/sweep.sqlite; --resume continues "
        "a killed or extended sweep; 'featuredream sweep-summary DIR' reports on it.",
    )
    s.add_argument("--features", required=True, help="features: 3,17,42 or 0-2303 or a mix (0-9,20-29)")
    s.add_argument("--out", required=True, help="sweep directory (created; holds sweep.sqlite)")
    s.add_argument(
        "--resume", action="store_true", help="continue the sweep in --out, skipping finished features"
    )
    s.add_argument("--backend", default="local", choices=BACKENDS, help="local (default) or ray")
    s.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster address (auto, ray://head:10001); default: a local cluster",
    )
    s.add_argument(
        "--workers", type=positive, default=None, help="CPUs of a local Ray cluster (default: all)"
    )
    s.add_argument(
        "--cpus-per-task",
        type=positive,
        default=None,
        help="with --backend ray: CPUs (and torch threads) per task, i.e. per model copy (default: 1 with "
        "GPUs, else a quarter of the smallest node's CPUs, at most 4 model copies per node)",
    )
    s.add_argument(
        "--group-size", type=positive, default=32, help="features dreamed together in one run (default: 32)"
    )
    add_model_options(s)
    add_config_options(s, DreamConfig)
    add_judge_option(s)

    m = sub.add_parser(
        "sweep-summary", help="summarize a sweep: ratio distribution, worst features, HTML index"
    )
    m.add_argument("dir", help="a 'featuredream sweep' --out directory")
    m.add_argument("--worst", type=count, default=20, help="worst features to list (default: 20)")
    m.add_argument(
        "--cards", type=count, default=0, help="write feature cards for the N worst features (default: 0)"
    )
    m.add_argument("--no-plot", action="store_true", help="no ratios.png and no histogram in index.html")


def _spec(args):
    from ..sweep.spec import SweepSpec

    return SweepSpec(
        model=args.model,
        sae=args.sae,
        kind=args.objective,
        reduce=args.reduce,
        norm_guard=not args.no_norm_guard,
        device=args.device,
        dtype=args.dtype,
        config=config_for_sae_files(args),
        group_size=args.group_size,
        judge=None if getattr(args, "judge", "none") == "none" else args.judge,
    )


def cmd_sweep(args) -> int:
    from ..sweep import run
    from ..sweep.spec import parse_features, sae_width
    from ..sweep.store import STORE_FILE

    spec = _spec(args)  # options checked before anything is loaded or written
    features = parse_features(args.features, sae_width(spec.sae))  # bounds checked before expanding
    try:
        o = run.run_sweep(
            spec,
            features,
            args.out,
            resume=args.resume,
            backend=args.backend,
            address=args.ray_address,
            workers=args.workers,
            cpus_per_task=args.cpus_per_task,
            progress=spec.config.progress,
        )
    except KeyboardInterrupt:
        print(
            f"featuredream: interrupted: finished features are in {args.out}; rerun with --resume",
            file=sys.stderr,
        )
        return 130
    print(
        f"sweep: {o.requested} features, {o.skipped} already done, {o.written} written now "
        f"({o.errors} could not start) in {o.seconds:.1f} s; store {Path(args.out) / STORE_FILE}"
    )
    if o.failed:
        n = sum(len(g) for g, _ in o.failed)
        print(
            f"featuredream: error: {n} features in {len(o.failed)} groups failed after retries "
            f"(first: {o.failed[0][1]}); rerun with --resume to retry them",
            file=sys.stderr,
        )
        return 1
    print(f"summary: featuredream sweep-summary {args.out}")
    return 0


def cmd_sweep_summary(args) -> int:
    from ..sweep.summary import format_summary, summarize, write_cards, write_index, write_plot

    s = summarize(args.dir)
    print(format_summary(s, args.worst))
    if args.cards:
        paths = write_cards(args.dir, [r.feature for r in s.worst(args.cards)])
        print(f"wrote {len(paths)} feature cards in {Path(args.dir) / 'cards'}")
    if not args.no_plot and s.ratios:
        print(f"wrote {write_plot(args.dir, s)}")
    print(f"wrote {write_index(args.dir, s, plot=not args.no_plot)}")
    return 0


COMMANDS = {"sweep": cmd_sweep, "sweep-summary": cmd_sweep_summary}
