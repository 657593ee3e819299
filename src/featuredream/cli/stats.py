"""``featuredream stats``: statistics for any SAE from a corpus (maxima, fire rates, top examples with
context, the natural-text XE table), so it warm-starts, gets ``--xe-max p90`` and reports ratios like the
shipped SAEs (see :mod:`featuredream.saes.stats`).

``register(subparsers)`` adds the command; ``COMMANDS`` maps it to its handler.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .options import add_config_options, add_model_options, config_from, load_checked

log = logging.getLogger("featuredream")


def register(sub) -> None:
    """Add ``stats`` to the ``sub`` subparsers of the main parser."""
    from ..saes.stats import StatsConfig

    s = sub.add_parser(
        "stats",
        help="compute an SAE's statistics from a corpus (then dream/card/inspect/sweep use them)",
        description="One streaming pass over a corpus for all latents: maximum, fire rate, top examples "
        "with their whole context, maximum decoder projection, and the natural-text XE table of the prose reference "
        "windows. Written to --out DIR or to the cache, where load_sae finds them for this model and SAE.",
    )
    add_model_options(s, objective=False)
    s.add_argument(
        "--corpus",
        nargs="+",
        default=["default"],
        help="'default' (the offline corpus), text files or directories (*.txt, *.md), a .jsonl file, or "
        "hf:NAME[:SPLIT] (a datasets dataset; needs the 'datasets' extra) (default: default)",
    )
    s.add_argument("--text-field", default="text", help="the text field of JSONL / datasets rows")
    s.add_argument(
        "--out",
        default=None,
        help="output directory (default: the cache, keyed by model, SAE, corpus and tokens, where "
        "'featuredream dream --sae X' finds them)",
    )
    add_config_options(s, StatsConfig)


def output_dir(args, model, sae, docs, tokens: int) -> Path:
    """``--out``, else the cache folder of (model, SAE, corpus, tokens)."""
    from ..models.identity import loaded_model_identity, sae_weights_identity, texts_digest
    from ..models.loading import model_name
    from ..saes.loading import stats_cache_root

    if args.out is not None:
        out = Path(args.out).expanduser()
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {args.out!r} is a file: valid is a directory (made if missing)")
        return out
    root = stats_cache_root(loaded_model_identity(model_name(model)), sae_weights_identity(args.sae))
    return root / f"{texts_digest(docs)}-{tokens}"


def cmd_stats(args) -> int:
    from ..models.identity import loaded_model_identity, sae_weights_identity
    from ..models.loading import model_name
    from ..saes.stats import StatsConfig, StatsInputs, check_tokens, compute_statistics
    from ..text.corpus import load_corpus

    cfg = config_from(args, StatsConfig)
    cfg.check()
    if args.out is not None:
        output_dir(args, None, None, [], 0)  # a bad --out fails before the model loads
    model, tok, sae = load_checked(args)
    check_tokens(cfg, cfg.ctx or sae.context_size or 64)
    docs = load_corpus(args.corpus, text_field=args.text_field)
    out = output_dir(args, model, sae, docs, cfg.tokens)
    ids = (loaded_model_identity(model_name(model)), sae_weights_identity(args.sae))
    inp = StatsInputs(model, tok, sae, docs, " ".join(args.corpus), *ids)
    stats = compute_statistics(inp, cfg, out)
    info = stats.info
    live = int((stats.fire_rate > 0).sum())
    print(
        f"wrote {out}: {info['positions']} positions of {info['statistics_windows']} windows, "
        f"{live}/{sae.d_sae} latents fire, XE table from {info['xe_table_windows']} windows "
        f"({info.get('xe_reference', 'held-out windows')}) "
        f"({info['seconds']:.0f} s)"
    )
    return 0


COMMANDS = {"stats": cmd_stats}
