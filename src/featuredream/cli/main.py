"""``featuredream dream | score | train-sae | inspect | card``; options come from the config dataclasses.

Bad input prints one line (``featuredream: error: ...``) on stderr and exits 2; Ctrl-C during a dream
writes the best-so-far result and exits 130.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import MISSING, fields
from pathlib import Path

log = logging.getLogger("featuredream")

_TYPES = {
    "int": int,
    "float": float,
    "str": str,
    "float | None": float,
    "int | None": int,
    "str | None": str,
    "float | str | None": str,
}


def _penalties(text: str) -> tuple[float, ...]:
    from ..engine.config import log_penalties

    if text == "auto":
        return log_penalties()
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid penalties {text!r}: valid is 'auto' or comma-separated numbers"
        ) from None


def add_config_options(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per dataclass field, with the field's docstring as help and its default."""
    from ..engine.config import field_docs

    docs = field_docs(cls)
    for f in fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        help_ = docs.get(f.name, "") + (f" (default: {default})" if default is not None else "")
        if f.type == "bool":
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default, help=docs.get(f.name)
            )
        elif f.name == "xe_max":
            parser.add_argument(
                flag,
                default="auto",
                metavar="X|pNN|none",
                help=docs.get(f.name, "") + " (default: p90 when the SAE ships an XE table, else none)",
            )
        elif f.name == "pareto":
            parser.add_argument(flag, type=_penalties, default=None, metavar="L1,L2,...|auto", help=help_)
        else:
            parser.add_argument(flag, type=_TYPES[str(f.type)], default=default, help=help_)


def _config_from(args, cls, skip: tuple[str, ...] = ()):
    """The dataclass from parsed options; ``--xe-max auto`` stays None here (see :func:`auto_xe_max`)."""
    kw = {f.name: getattr(args, f.name) for f in fields(cls) if f.name not in skip}
    if kw.get("xe_max") == "auto":
        kw["xe_max"] = None
    return cls(**kw)


def auto_xe_max(args, cfg, sae):
    """``--xe-max auto`` (the default): p90 of natural text at each length when the SAE ships an XE
    table, else no ceiling. Other values are kept as given."""
    from dataclasses import replace

    if getattr(args, "xe_max", None) != "auto":
        return cfg
    has = sae is not None and sae.stats is not None and sae.stats.has_xe_table()
    if not has:
        log.info("--xe-max: no XE table shipped with the SAE, so no fluency ceiling")
    return replace(cfg, xe_max="p90" if has else None)


def _check_out_path(path: str | None) -> Path | None:
    """Fail before an hour of work if the result cannot be written."""
    if path is None:
        return None
    p = Path(path).expanduser()
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(
            f"output directory {str(parent)!r} does not exist: valid is a path in an existing directory"
        )
    try:  # really try: os.access says yes to root even on read-only file systems
        import tempfile

        with tempfile.NamedTemporaryFile(dir=parent, prefix=".featuredream-probe-"):
            pass
    except OSError:
        raise ValueError(
            f"output directory {str(parent)!r} is not writable: valid is a writable directory"
        ) from None
    if p.is_dir():
        raise ValueError(f"output path {str(p)!r} is a directory: valid is a file path")
    return p


def _parse_feature(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"feature {text!r} is not an integer") from None


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (no usage dump) and exits 2."""

    def error(self, message: str):
        self.exit(2, f"featuredream: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from ..engine.config import DreamConfig
    from ..lm.train_sae import TrainConfig

    p = _Parser(prog="featuredream", description=__doc__.split("\n")[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    base = argparse.ArgumentParser(add_help=False)
    base.add_argument(
        "--model", default=None, help="model name or path (default: embedded SmolLM2-135M-Instruct)"
    )
    base.add_argument(
        "--sae",
        default="default",
        help="SAE: fixture name (default, smollm2-q18h6, ...), sae-lens directory, or release:sae_id",
    )
    base.add_argument(
        "--objective", default="encoder", help="encoder (pre-activation) or decoder (projection)"
    )
    base.add_argument("--reduce", default="last", help="position reduction: last, max, mean")
    base.add_argument(
        "--no-norm-guard", action="store_true", help="do not exclude massive-activation positions"
    )
    base.add_argument("--device", default=None, help="cpu, cuda (default: cuda if available)")
    base.add_argument(
        "--dtype", default=None, help="float32, bfloat16, float16 (default: float32 on cpu, bfloat16 on cuda)"
    )
    common = argparse.ArgumentParser(add_help=False, parents=[base])
    common.add_argument("--feature", type=_parse_feature, required=True, help="latent index")
    # dream / score: an SAE latent (--feature) or a raw direction at a site (--site with --direction / --key-text)
    target = argparse.ArgumentParser(add_help=False)
    target.add_argument("--feature", type=_parse_feature, default=None, help="latent index of --sae")
    target.add_argument(
        "--site",
        default=None,
        help="site of a raw direction, e.g. attn_q:18:6 (layer 18, head 6's query) or resid_post:12",
    )
    target.add_argument(
        "--direction",
        default=None,
        metavar="FILE",
        help="raw direction to project --site on: a .json list of numbers or a .safetensors file with one tensor",
    )
    target.add_argument(
        "--key-text",
        default=None,
        metavar="TEXT",
        help="for a query --site: use the head's key at the last token of TEXT as the direction "
        "(which prompt makes the head look for it?)",
    )

    d = sub.add_parser("dream", parents=[base, target], help="dream a prompt that maximizes a feature")
    d.add_argument("--out", default="dream.json", help="result JSON path (default: dream.json)")
    d.add_argument(
        "--html", action="store_true", help="also write an HTML feature card beside the JSON (.html)"
    )
    add_config_options(d, DreamConfig)
    from .sweep import add_dream_features_option
    from .sweep import register as register_sweep

    add_dream_features_option(d)  # dream --features 3,17,42: several features in one run

    s = sub.add_parser(
        "score", parents=[base, target], help="score texts on a feature with the reference path"
    )
    s.add_argument("texts", nargs="+", help="texts to score")

    t = sub.add_parser(
        "train-sae", help="train an SAE on the offline corpus (reproduces the shipped default)"
    )
    t.add_argument("--out", required=True, help="output directory (sae-lens format + statistics)")
    t.add_argument("--model", default=None, help="model name or path (default: embedded)")
    t.add_argument("--acts-cache", default=None, help="safetensors file to cache captured activations in")
    add_config_options(t, TrainConfig)

    from .inspect import register

    register(sub, common)  # inspect <action>, card
    register_sweep(sub)  # sweep, sweep-summary
    return p


def _setup(args):
    from ..lm.models import load_model
    from ..engine.objectives import make_objective
    from ..lm.saes import check_site, load_sae

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
    sae = load_sae(args.sae, model=model)
    fvu = check_site(model, tok, sae)
    log.info("SAE %s at %s: FVU %.3f on check texts", sae.name, sae.site.hook_name, fvu)
    objective = make_objective(
        sae, args.feature, args.objective, args.reduce, norm_guard=not args.no_norm_guard
    )
    return model, tok, sae, objective


def _cmd_dream(args) -> int:
    from ..engine.config import DreamConfig

    if args.features is not None:
        from .sweep import cmd_dream_features

        return cmd_dream_features(args)
    cfg = _config_from(args, DreamConfig)
    out = _check_out_path(args.out)
    model, tok, sae, objective = _setup(args)
    cfg = auto_xe_max(args, cfg, sae)
    from ..engine.interrupt import graceful_sigint
    from ..engine.optimizer import dream

    with graceful_sigint():  # Ctrl-C: stop after this iteration and write the best so far (twice: at once)
        result = dream(model, tok, objective, cfg)
    result.save(out)
    print(f"best prompt : {result.best.text!r}")
    print(f"activation  : {result.best.activation:.3f}  ({objective.name}, reduce={args.reduce})")
    print(
        f"XE          : {result.best.xe:.3f}"
        + (
            f"  (limit {result.xe_limit:.3f} = xe_max {cfg.xe_max} at {len(result.best.ids)} tokens, "
            f"feasible: {result.feasible})"
            if result.xe_limit is not None
            else "  (no fluency ceiling)"
        )
    )
    if result.dataset_max is not None:
        print(f"dataset max : {result.dataset_max:.3f}  ratio {result.ratio:.2f}")
    print(
        f"start       : {result.start}; {len(result.history)} iterations, {result.n_evaluated} candidates, "
        f"{result.wall_time:.1f} s ({result.stop_reason})"
    )
    print(
        f"verified    : re-scored from the text, |fast - reference| = {result.verification['abs_error']:.2e}"
    )
    print(f"wrote {out}")
    if args.html and sae is None:
        print("no HTML card: cards describe an SAE latent, not a raw direction")
    elif args.html:
        from ..observe.report import feature_card

        feature_card(model, tok, sae, args.feature, result, out.with_suffix(".html"))
        print(f"wrote {out.with_suffix('.html')}")
    return 130 if result.interrupted else 0


def _cmd_score(args) -> int:
    from ..engine.evaluate import reference_evaluate

    model, tok, sae, objective = _setup(args)
    out = reference_evaluate(model, tok, objective, args.texts)
    dmax = objective.dataset_max() if hasattr(objective, "dataset_max") else None
    for text, s, x in zip(args.texts, out.scores.tolist(), out.xe.tolist()):
        ratio = f"  ratio {s / dmax:.2f}" if dmax else ""
        print(f"{s:10.3f}  XE {x:6.3f}{ratio}  {text!r}")
    return 0


def _cmd_train_sae(args) -> int:
    from ..lm.corpus import default_corpus
    from ..lm.models import DEFAULT_MODEL, load_model, model_name
    from ..lm.train_sae import TrainConfig, train_sae

    cfg = _config_from(args, TrainConfig)
    model, tok = load_model(args.model, device="cpu", dtype="float32")
    name = DEFAULT_MODEL if args.model is None else model_name(model)
    stats = train_sae(
        model, tok, default_corpus(), cfg, args.out, model_name=name, acts_cache=args.acts_cache
    )
    print(f"wrote {args.out}: FVU {stats['fvu_heldout']:.3f}, dead {100 * stats['dead_fraction']:.1f}%")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed
        return int(e.code or 0)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("featuredream").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from .inspect import COMMANDS
    from .sweep import COMMANDS as SWEEP_COMMANDS

    cmd = {
        "dream": _cmd_dream,
        "score": _cmd_score,
        "train-sae": _cmd_train_sae,
        **COMMANDS,
        **SWEEP_COMMANDS,
    }[args.command]
    try:
        return cmd(args)
    except ValueError as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"featuredream: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("featuredream: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
