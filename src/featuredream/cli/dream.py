"""``featuredream dream`` (one target, or ``--features`` for several in one run) and ``featuredream score``.

A target is an SAE latent (``--feature``) or a raw direction at a site (``--site`` with ``--direction`` or
``--key-text``, :mod:`featuredream.cli.direction`). ``register(subparsers)`` adds the commands; ``COMMANDS``
maps them to their handlers, which raise ``ValueError`` for bad input (one line, exit 2).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from .. import ready
from .options import (
    add_config_options,
    add_judge_option,
    add_model_options,
    auto_xe_max,
    check_out_path,
    config_for_sae_files,
    config_from,
    feature_id,
    int_at_least,
    load_checked,
    load_checked_sae,
)
from .printout import print_result

log = logging.getLogger("featuredream")


def register(sub) -> None:
    """Add ``dream`` and ``score`` to the ``sub`` subparsers of the main parser."""
    from ..engine.config import DreamConfig

    base = argparse.ArgumentParser(add_help=False)
    add_model_options(base)
    add_target_options(base)

    d = sub.add_parser("dream", parents=[base], help="dream a prompt that maximizes a feature")
    d.add_argument("--out", default="dream.json", help="result JSON path (default: dream.json)")
    d.add_argument(
        "--html", action="store_true", help="also write an HTML feature card beside the JSON (.html)"
    )
    add_config_options(d, DreamConfig)
    add_judge_option(d)
    d.add_argument(
        "--features",
        default=None,
        help="several features at once (3,17,42 or 0-31): one run sharing batched forward passes; "
        "--out is then a directory (default: dreams/) of feature_N.json",
    )
    d.add_argument(
        "--group-size",
        type=int_at_least(1),
        default=32,
        help="with --features: features per run (default: 32)",
    )

    s = sub.add_parser("score", parents=[base], help="score texts on a feature with the reference path")
    s.add_argument("texts", nargs="+", help="texts to score")


def add_target_options(parser: argparse.ArgumentParser) -> None:
    """An SAE latent (``--feature``) or a raw direction at a site (``--site`` with ``--direction`` /
    ``--key-text``)."""
    parser.add_argument("--feature", type=feature_id, default=None, help="latent index of --sae")
    parser.add_argument(
        "--site",
        default=None,
        help="site of a raw direction, e.g. attn_q:18:6 (layer 18, head 6's query) or resid_post:12",
    )
    parser.add_argument(
        "--direction",
        default=None,
        metavar="FILE",
        help="raw direction to project --site on: a .json list of numbers or a .safetensors file with one tensor",
    )
    parser.add_argument(
        "--key-text",
        default=None,
        metavar="TEXT",
        help="for a query --site: use the head's key at the last token of TEXT as the direction "
        "(which prompt makes the head look for it?)",
    )


def setup(args):
    """``(model, tokenizer, sae or None, objective)`` for the target the options name."""
    from ..models.loading import load_model
    from ..objectives.kinds import make_objective

    model, tok = load_model(args.model, device=args.device, dtype=args.dtype)
    if getattr(args, "direction", None) is not None or getattr(args, "key_text", None) is not None:
        from .direction import direction_objective

        return model, tok, None, direction_objective(args, model, tok)
    if getattr(args, "site", None) is not None:
        raise ValueError("--site needs --direction FILE or --key-text TEXT (an SAE brings its own site)")
    if args.feature is None:
        raise ValueError(
            "no target: valid is --feature N (a latent of --sae) or --site with --direction / --key-text"
        )
    sae = load_checked_sae(args, model, tok)
    objective = make_objective(
        sae, args.feature, args.objective, args.reduce, norm_guard=not args.no_norm_guard
    )
    return model, tok, sae, objective


def cmd_dream(args) -> int:
    from ..engine.config import DreamConfig

    if args.features is not None:
        return cmd_dream_features(args)
    cfg = config_from(args, DreamConfig)
    out = check_out_path(args.out)
    model, tok, sae, objective = setup(args)
    cfg = auto_xe_max(args, cfg, sae)
    from ..engine.dream import dream
    from ..engine.interrupt import graceful_sigint

    t_judge = time.time()
    judge = load_judge(args, model)
    if judge is not None and time.time() - t_judge >= 2:
        print(
            f"setup       : judge {judge.name} loaded in {time.time() - t_judge:.1f} s (outside the time budget)"
        )
    with graceful_sigint():  # Ctrl-C: stop after this iteration and write the best so far (twice: at once)
        ready.reached("dream-started")
        result = dream(model, tok, objective, cfg, judge=judge)
    result.save(out)
    print_result(result, cfg, f"{objective.name}, reduce={args.reduce}")
    print(f"wrote {out}")
    if args.html and sae is None:
        print("no HTML card: cards describe an SAE latent, not a raw direction")
    elif args.html:
        from ..observe.card_html import feature_card

        feature_card(model, tok, sae, args.feature, result, out.with_suffix(".html"))
        print(f"wrote {out.with_suffix('.html')}")
    return 130 if result.interrupted else 0


def load_judge(args, model):
    """The ``--judge`` of the options, loaded before the search (a bad name fails in one line at once)."""
    from ..text.judge import resolve_judge

    try:
        return resolve_judge(args.judge, device=next(model.parameters()).device, dreamer=model)
    except (OSError, RuntimeError) as e:
        raise ValueError(
            f"--judge {args.judge!r} could not be loaded ({e}): valid is default, none or a model name"
        ) from None


def _features_out(args) -> Path:
    """``dream --features``' output directory, after checking the options that need no model (the feature
    list's syntax, the reduction, the output path)."""
    from ..objectives.kinds import check_reduce
    from ..sweep.spec import count_features

    if args.feature is not None or args.site is not None:
        raise ValueError("--features cannot be combined with --feature or --site: give one target")
    out = Path("dreams" if args.out == "dream.json" else args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"with --features, --out is a directory; {str(out)!r} is a file")
    if not out.parent.is_dir():
        raise ValueError(f"parent of output directory {str(out)!r} does not exist: create it first")
    count_features(args.features)  # the list's syntax, before the model loads (nothing expanded)
    check_reduce(args.reduce)
    return out


def cmd_dream_features(args) -> int:
    """``dream --features``: one multi-feature run per group; a result JSON per feature in ``--out``, written
    as each group finishes (Ctrl-C keeps every finished group's files, exit 130)."""
    from ..engine.dream import dream_features
    from ..engine.results import FeatureError
    from ..sweep.spec import parse_features

    out = _features_out(args)
    cfg = config_for_sae_files(args)
    model, tok, sae = load_checked(args)
    features = parse_features(args.features, sae.d_sae)
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
            pct = f"{r.judge.percentile:5.0f}" if r.judge else "    -"
            act = f"{r.best.activation:10.3f} {ratio} {r.best.xe:6.2f} {pct}"
            print(f"{f:8d} {act}  {r.best.text!r}", flush=True)
            if args.html:
                from ..observe.card_html import feature_card

                feature_card(model, tok, sae, f, r, path.with_suffix(".html"))

    judge = load_judge(args, model)
    print(f"{'feature':>8} {'activation':>10} {'ratio':>6} {'XE':>6} {'judge':>5}  best prompt", flush=True)
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
            judge=judge,
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


def cmd_score(args) -> int:
    from ..evaluation.evaluate import reference_evaluate

    model, tok, sae, objective = setup(args)
    out = reference_evaluate(model, tok, objective, args.texts)
    dmax = objective.dataset_max() if hasattr(objective, "dataset_max") else None
    for text, s, x in zip(args.texts, out.scores.tolist(), out.xe.tolist()):
        ratio = f"  ratio {s / dmax:.2f}" if dmax else ""
        print(f"{s:10.3f}  XE {x:6.3f}{ratio}  {text!r}")
    return 0


COMMANDS = {"dream": cmd_dream, "score": cmd_score}
