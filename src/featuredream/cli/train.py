"""``featuredream train-sae``: train an SAE on the offline corpus (reproduces the shipped default).

``register(subparsers)`` adds the command; ``COMMANDS`` maps it to its handler.
"""

from __future__ import annotations

from .options import MODEL_HELP, add_config_options, config_from


def register(sub) -> None:
    """Add ``train-sae`` to the ``sub`` subparsers of the main parser."""
    from ..saes.training import TrainConfig

    t = sub.add_parser(
        "train-sae", help="train an SAE on the offline corpus (reproduces the shipped default)"
    )
    t.add_argument("--out", required=True, help="output directory (sae-lens format + statistics)")
    t.add_argument("--model", default=None, help=MODEL_HELP)
    t.add_argument("--acts-cache", default=None, help="safetensors file to cache captured activations in")
    add_config_options(t, TrainConfig)


def cmd_train_sae(args) -> int:
    from ..models.loading import DEFAULT_MODEL, load_model, model_name
    from ..saes.training import TrainConfig, train_sae
    from ..text.corpus import default_corpus

    cfg = config_from(args, TrainConfig)
    model, tok = load_model(args.model, device="cpu", dtype="float32")
    name = DEFAULT_MODEL if args.model is None else model_name(model)
    stats = train_sae(
        model, tok, default_corpus(), cfg, args.out, model_name=name, acts_cache=args.acts_cache
    )
    print(f"wrote {args.out}: FVU {stats['fvu_heldout']:.3f}, dead {100 * stats['dead_fraction']:.1f}%")
    return 0


COMMANDS = {"train-sae": cmd_train_sae}
