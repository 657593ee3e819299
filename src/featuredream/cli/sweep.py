"""``featuredream sweep``, ``featuredream sweep-summary`` and ``featuredream dream --features``.

``register(subparsers)`` adds the two sweep commands to the main parser; ``COMMANDS`` maps them to their
handlers; :func:`cmd_dream_features` is what ``dream`` runs when given ``--features``. Handlers raise
``ValueError`` for bad input (``featuredream.cli.main`` prints one line, exit 2).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def _int_at_least(lo: int):
    """An argparse type: an integer >= ``lo``, else a one-line error naming the value."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"{v} is invalid: valid is an integer >= {lo}")
        return v

    return parse


_positive, _count = _int_at_least(1), _int_at_least(0)


def register(sub) -> None:
    """Add ``sweep`` and ``sweep-summary`` to the ``sub`` subparsers of the main parser."""
    from .main import add_config_options
    from ..engine.config import DreamConfig
    from ..sweep.run import BACKENDS

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
        "--workers", type=_positive, default=None, help="CPUs of a local Ray cluster (default: all)"
    )
    s.add_argument(
        "--cpus-per-task",
        type=_positive,
        default=None,
        help="with --backend ray: CPUs (and torch threads) per task, i.e. per model copy (default: 1 with "
        "GPUs, else a quarter of the smallest node's CPUs, at most 4 model copies per node)",
    )
    s.add_argument(
        "--group-size", type=_positive, default=32, help="features dreamed together in one run (default: 32)"
    )
    s.add_argument(
        "--model", default=None, help="model name or path (default: embedded SmolLM2-135M-Instruct)"
    )
    s.add_argument(
        "--sae", default="default", help="SAE: fixture name, sae-lens directory, or release:sae_id"
    )
    s.add_argument("--objective", default="encoder", help="encoder (pre-activation) or decoder (projection)")
    s.add_argument("--reduce", default="last", help="position reduction: last, max, mean")
    s.add_argument("--no-norm-guard", action="store_true", help="do not exclude massive-activation positions")
    s.add_argument("--device", default=None, help="cpu, cuda (default: cuda if available)")
    s.add_argument(
        "--dtype",
        default=None,
        help="float32, bfloat16, float16 (cuda) (default: float32 on cpu, bfloat16 on cuda where supported)",
    )
    add_config_options(s, DreamConfig)

    m = sub.add_parser(
        "sweep-summary", help="summarize a sweep: ratio distribution, worst features, HTML index"
    )
    m.add_argument("dir", help="a 'featuredream sweep' --out directory")
    m.add_argument("--worst", type=_count, default=20, help="worst features to list (default: 20)")
    m.add_argument(
        "--cards", type=_count, default=0, help="write feature cards for the N worst features (default: 0)"
    )
    m.add_argument("--no-plot", action="store_true", help="no ratios.png and no histogram in index.html")


def add_dream_features_option(parser: argparse.ArgumentParser) -> None:
    """``dream --features``: several features in one multi-feature run (``--out`` is then a directory)."""
    parser.add_argument(
        "--features",
        default=None,
        help="several features at once (3,17,42 or 0-31): one run sharing batched forward passes; "
        "--out is then a directory (default: dreams/) of feature_N.json",
    )
    parser.add_argument(
        "--group-size", type=_positive, default=32, help="with --features: features per run (default: 32)"
    )


def _sweep_config(args):
    """The DreamConfig of a sweep; ``--xe-max auto`` resolved from the SAE's files (nothing loaded yet)."""
    from dataclasses import replace

    from .main import _config_from
    from ..engine.config import DreamConfig
    from ..lm.saes import ships_xe_table

    cfg = _config_from(args, DreamConfig)
    if args.xe_max == "auto" and ships_xe_table(args.sae):
        cfg = replace(cfg, xe_max="p90")
    return cfg


def _spec(args):
    from ..sweep.run import SweepSpec

    return SweepSpec(
        model=args.model,
        sae=args.sae,
        kind=args.objective,
        reduce=args.reduce,
        norm_guard=not args.no_norm_guard,
        device=args.device,
        dtype=args.dtype,
        config=_sweep_config(args),
        group_size=args.group_size,
    )


def cmd_sweep(args) -> int:
    from ..sweep.run import STORE_FILE, parse_features, run_sweep
    from ..sweep.store import sae_width

    spec = _spec(args)  # options checked before anything is loaded or written
    features = parse_features(args.features, sae_width(spec.sae))  # bounds checked before expanding
    try:
        o = run_sweep(
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
        paths = write_cards(args.dir, [r["feature"] for r in s.worst(args.cards)])
        print(f"wrote {len(paths)} feature cards in {Path(args.dir) / 'cards'}")
    if not args.no_plot and s.ratios:
        print(f"wrote {write_plot(args.dir, s)}")
    print(f"wrote {write_index(args.dir, s, plot=not args.no_plot)}")
    return 0


def cmd_dream_features(args) -> int:
    """``dream --features``: one multi-feature run per group; a result JSON per feature in ``--out``, written
    as each group finishes (Ctrl-C keeps every finished group's files, exit 130)."""
    from ..lm.models import load_model
    from ..engine.multi import FeatureError, dream_features
    from ..engine.objectives import check_reduce
    from ..lm.saes import check_site, load_sae
    from ..sweep.run import count_features, parse_features

    if args.feature is not None or args.site is not None:
        raise ValueError("--features cannot be combined with --feature or --site: give one target")
    cfg = _sweep_config(args)
    out = Path("dreams" if args.out == "dream.json" else args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"with --features, --out is a directory; {str(out)!r} is a file")
    if not out.parent.is_dir():
        raise ValueError(f"parent of output directory {str(out)!r} does not exist: create it first")
    count_features(args.features)  # the list's syntax, before the model loads (nothing expanded)
    check_reduce(args.reduce)
    model, tok = load_model(args.model, device=args.device, dtype=args.dtype)
    sae = load_sae(args.sae, model=model)
    features = parse_features(args.features, sae.d_sae)
    check_site(model, tok, sae)
    out.mkdir(exist_ok=True)
    written, failed, interrupted = [], [], False

    def write_group(group, results) -> None:
        nonlocal interrupted
        for f, r in zip(group, results):
            if isinstance(r, FeatureError):
                failed.append(f)
                print(f"{f:8d} failed: {r.message}", flush=True)
                continue
            interrupted |= r.interrupted
            path = r.save(out / f"feature_{f}.json")
            written.append(f)
            ratio = f"{r.ratio:6.2f}" if r.ratio is not None else "     -"
            print(f"{f:8d} {r.best.activation:10.3f} {ratio} {r.best.xe:6.2f}  {r.best.text!r}", flush=True)
            if args.html:
                from ..observe.report import feature_card

                feature_card(model, tok, sae, f, r, path.with_suffix(".html"))

    print(f"{'feature':>8} {'activation':>10} {'ratio':>6} {'XE':>6}  best prompt", flush=True)
    try:
        dream_features(
            model,
            tok,
            sae,
            features,
            cfg,
            kind=args.objective,
            reduce=args.reduce,
            norm_guard=not args.no_norm_guard,
            group_size=args.group_size,
            errors="record",
            on_group=write_group,
        )
    except KeyboardInterrupt:
        interrupted = True
    done = len(written) + len(failed)
    failures = f"; {len(failed)} features failed" if failed else ""
    print(f"wrote {len(written)} results in {out}{failures}")
    if interrupted:
        print(
            f"featuredream: interrupted: {len(features) - done} of {len(features)} features not dreamed",
            file=sys.stderr,
        )
    return 130 if interrupted else 0


COMMANDS = {"sweep": cmd_sweep, "sweep-summary": cmd_sweep_summary}
