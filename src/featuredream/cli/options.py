"""Options shared by the command families: the model/SAE/device/dtype options (one spelling, one help
text), the options generated from the config dataclasses, argparse types, and the checks every command
runs on its output path before any work.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from dataclasses import MISSING, fields, replace
from pathlib import Path

log = logging.getLogger("featuredream")

MODEL_HELP = "model name or path (default: embedded SmolLM2-135M-Instruct)"

_TYPES = {
    "int": int,
    "float": float,
    "str": str,
    "float | None": float,
    "int | None": int,
    "str | None": str,
    "float | str | None": str,
}


# ------------------------------------------------------------------------------------ argparse types


def integer(text: str) -> int:
    """An argparse type: an integer, else a one-line error naming the value."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def int_at_least(lo: int):
    """An argparse type: an integer >= ``lo``, else a one-line error naming the value."""

    def parse(text: str) -> int:
        v = integer(text)
        if v < lo:
            raise argparse.ArgumentTypeError(f"{v} is invalid: valid is an integer >= {lo}")
        return v

    return parse


def feature_id(text: str) -> int:
    """An argparse type for ``--feature``: a latent index."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"feature {text!r} is not an integer") from None


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


# ------------------------------------------------------------------------------------ option groups


def add_model_options(parser: argparse.ArgumentParser, *, objective: bool = True) -> None:
    """``--model --sae --device --dtype`` and, with ``objective``, ``--objective --reduce --no-norm-guard``
    (what turns an SAE latent into an objective)."""
    parser.add_argument("--model", default=None, help=MODEL_HELP)
    parser.add_argument(
        "--sae",
        default="default",
        help="SAE: fixture name (default, query, smollm2-q18h6, ...), sae-lens directory, or release:sae_id",
    )
    if objective:
        parser.add_argument(
            "--objective", default="encoder", help="encoder (pre-activation) or decoder (projection)"
        )
        parser.add_argument("--reduce", default="last", help="position reduction: last, max, mean")
        parser.add_argument(
            "--no-norm-guard",
            action="store_true",
            help="do not exclude massive-activation positions (norm above the SAE's recorded cap, or for "
            "a direction and an SAE without statistics 3x the site's median norm)",
        )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    parser.add_argument(
        "--dtype",
        default=None,
        help="float32, bfloat16, float16 (cuda only) (default: float32 on cpu, bfloat16 on cuda where "
        "supported)",
    )


def model_options(*, objective: bool = True, feature: bool = False) -> argparse.ArgumentParser:
    """A parent parser with :func:`add_model_options` and, with ``feature``, a required ``--feature``."""
    p = argparse.ArgumentParser(add_help=False)
    add_model_options(p, objective=objective)
    if feature:
        p.add_argument("--feature", type=feature_id, required=True, help="latent index")
    return p


def add_config_options(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per dataclass field, with the field's docstring as help and its default."""
    from ..engine.config import field_docs

    docs = {k: v.replace("%", "%%") for k, v in field_docs(cls).items()}  # argparse formats help with %
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
                help=docs.get(f.name, "")
                + " (default: p90, of the SAE statistics' XE table or else the model's own)",
            )
        elif f.name == "ladder":
            parser.add_argument(
                flag,
                nargs="+",
                default=list(_default_ladder()),
                metavar="CEILING",
                help=docs.get(f.name, "") + " CLI default: p50 p75 p90 none; 'off' for no ladder",
            )
        elif f.name == "pareto":
            parser.add_argument(flag, type=_penalties, default=None, metavar="L1,L2,...|auto", help=help_)
        else:
            parser.add_argument(flag, type=_TYPES[str(f.type)], default=default, help=help_)


# ------------------------------------------------------------------------------------ from options


def config_from(args, cls, skip: tuple[str, ...] = ()):
    """The dataclass from parsed options; ``--xe-max auto`` stays None here (see :func:`auto_xe_max`)."""
    kw = {f.name: getattr(args, f.name) for f in fields(cls) if f.name not in skip}
    if kw.get("xe_max") == "auto":
        kw["xe_max"] = None
    if "ladder" in kw and kw["ladder"] is not None:
        kw["ladder"] = None if [str(c).lower() for c in kw["ladder"]] == ["off"] else tuple(kw["ladder"])
    return cls(**kw)


def _default_ladder() -> tuple:
    from ..engine.config import DEFAULT_LADDER

    return tuple("none" if c is None else c for c in DEFAULT_LADDER)


def add_judge_option(parser: argparse.ArgumentParser) -> None:
    """``--judge``: the fluency judge that scores the reported prompts (never used inside the search)."""
    default = os.environ.get("FEATUREDREAM_JUDGE", "default")
    parser.add_argument(
        "--judge",
        default=default,
        metavar="MODEL|default|none",
        help="fluency judge: a model of another family that scores the reported prompts' XE as a "
        "percentile among natural prose (50 = typical), never used inside the search; 'default' is "
        f"Gemma 3 270M (fetched once, offline; SmolLM2 when the dreamed model is Gemma 3 270M), 'none' "
        f"skips it (default: {default}; "
        "$FEATUREDREAM_JUDGE sets it)",
    )


def auto_xe_max(args, cfg, sae=None):
    """``--xe-max auto`` (the default): p90 of natural text at each length, from the XE table in the SAE's
    statistics or else the model's own table on the prose reference. Other values are kept as given."""
    if getattr(args, "xe_max", None) != "auto":
        return cfg
    return replace(cfg, xe_max="p90")


def config_for_sae_files(args):
    """The :class:`~featuredream.DreamConfig` of the options with ``--xe-max auto`` resolved (runs over many
    features: ``sweep``, ``dream --features``)."""
    from ..engine.config import DreamConfig

    return auto_xe_max(args, config_from(args, DreamConfig))


def check_out_path(path: str | None) -> Path | None:
    """``path`` as a Path if a file can be written there; fail before an hour of work if not."""
    if path is None:
        return None
    p = Path(path).expanduser()
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(
            f"output directory {str(parent)!r} does not exist: valid is a path in an existing directory"
        )
    try:  # really try: os.access says yes to root even on read-only file systems
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".featuredream-probe-"):
            pass
    except OSError:
        raise ValueError(
            f"output directory {str(parent)!r} is not writable: valid is a writable directory"
        ) from None
    if p.is_dir():
        raise ValueError(f"output path {str(p)!r} is a directory: valid is a file path")
    return p


# ------------------------------------------------------------------------------------ loading


def load_checked_sae(args, model, tok, *, stats_dir: str | None = None):
    """The ``--sae`` of the options for ``model``, site checked (:func:`~featuredream.saes.check.checked_sae`)."""
    from ..saes.check import checked_sae

    return checked_sae(model, tok, args.sae, stats_dir=stats_dir)


def load_checked(args, *, stats_dir: str | None = None):
    """``(model, tokenizer, sae)`` of the ``--model --sae --device --dtype`` options, site checked."""
    from ..models.loading import load_model

    model, tok = load_model(args.model, device=args.device, dtype=args.dtype)
    return model, tok, load_checked_sae(args, model, tok, stats_dir=stats_dir)
