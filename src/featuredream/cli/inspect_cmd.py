"""``featuredream inspect <action>`` and ``featuredream card``: observation, tracing and the HTML card.

``register(subparsers)`` adds the commands to the main parser; ``COMMANDS`` maps them to their handlers.
Handlers raise ``ValueError`` for bad input (``featuredream.cli.main`` prints one line, exit 2).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from .options import check_out_path, integer, model_options

log = logging.getLogger(__name__)


def _floats(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid list {text!r}: valid is comma-separated numbers, e.g. 0,4,8"
        ) from None
    if not vals:
        raise argparse.ArgumentTypeError("empty list: valid is comma-separated numbers, e.g. 0,4,8")
    return vals


def register(sub) -> None:
    """Add ``inspect`` (with its actions) and ``card`` to the ``sub`` subparsers of the main parser."""
    base = model_options(objective=False)  # the actions that take a --reduce have their own default
    latent = model_options(objective=False, feature=True)
    common = model_options(feature=True)  # a latent as an objective (attribution, card)
    enc = argparse.ArgumentParser(add_help=False)
    enc.add_argument(
        "--values", default="code", help="code (the SAE's sparse code) or pre (encoder pre-activation)"
    )
    enc.add_argument("-n", type=integer, default=10, help="rows to show (default: 10)")

    ins = sub.add_parser(
        "inspect",
        help="observe and trace features (top-features, diff, scan, examples, logits, attribution, steer)",
    )
    act = ins.add_subparsers(dest="action", required=True, parser_class=type(ins))
    a = act.add_parser("top-features", parents=[base, enc], help="the strongest features on a prompt")
    a.add_argument("prompt")
    a.add_argument("--reduce", default="last", help="last (real token), max, mean (default: last)")
    a = act.add_parser("diff", parents=[base, enc], help="features that separate two prompt sets")
    a.add_argument("--pos", nargs="+", default=[], metavar="PROMPT", help="positive prompts")
    a.add_argument("--neg", nargs="+", default=[], metavar="PROMPT", help="negative prompts")
    a.add_argument("--pos-file", help="file with one positive prompt per line")
    a.add_argument("--neg-file", help="file with one negative prompt per line")
    a.add_argument("--reduce", default="last", help="last, max, mean (default: last)")
    a = act.add_parser("scan", parents=[latent], help="one feature on each of several prompts")
    a.add_argument("prompts", nargs="*", help="prompts (or --file)")
    a.add_argument("--file", help="file with one prompt per line")
    a.add_argument("--reduce", default="max", help="last, max, mean (default: max)")
    a = act.add_parser("examples", parents=[latent], help="top dataset examples (shipped, or over --corpus)")
    a.add_argument(
        "--corpus", nargs="+", help="text files or directories of *.txt / *.md (default: shipped examples)"
    )
    a.add_argument("-k", type=integer, default=8, help="examples (default: 8)")
    a.add_argument("--ctx", type=integer, default=64, help="tokens per corpus window (default: 64)")
    a.add_argument("--batch-size", type=integer, default=32, help="windows per forward pass (default: 32)")
    a.add_argument(
        "--keep",
        type=float,
        default=0.9,
        help="the minimal context keeps this share of the value alone (default: 0.9)",
    )
    a.add_argument(
        "--full",
        action="store_true",
        help="print the whole context (\u2502 marks where the minimal one starts), not just the minimal one",
    )
    a = act.add_parser(
        "logits", parents=[latent], help="tokens the feature's decoder direction promotes / suppresses"
    )
    a.add_argument("-n", type=integer, default=10, help="tokens each way (default: 10)")
    a = act.add_parser("attribution", parents=[common], help="each input token's contribution to the feature")
    a.add_argument("prompt")
    a.add_argument(
        "--position", type=integer, default=None, help="token to explain (default: the objective's reduction)"
    )
    a.add_argument("--method", default="grad_x_input", help="grad_x_input or integrated_gradients")
    a = act.add_parser(
        "steer", parents=[latent], help="greedy continuations with the feature's direction added"
    )
    a.add_argument("prompt")
    a.add_argument(
        "--alphas",
        type=_floats,
        default=None,
        help="comma-separated (default: 0,2,4,8 x the feature's dataset max, or 0,2,4,8 without statistics)",
    )
    a.add_argument("--max-new-tokens", type=integer, default=20, help="tokens to generate (default: 20)")

    c = sub.add_parser("card", parents=[common], help="write a self-contained HTML feature card")
    c.add_argument("--out", required=True, help="HTML path")
    c.add_argument("--dream", default=None, help="a dream result JSON to show (from featuredream dream)")
    c.add_argument(
        "--corpus", nargs="+", help="take top examples from these text files instead of the shipped ones"
    )
    c.add_argument("--steer-prompt", default=None, help="prompt for the steering continuations")
    c.add_argument(
        "--alphas", type=_floats, default=None, help="steering alphas (default: 0,2,4,8 x the dataset max)"
    )
    c.add_argument("--json", default=None, help="also write a Neuronpedia-like JSON export here")


def _load(args):
    from .options import load_checked

    return load_checked(args)


def _lines(path: str | None, given: list[str], what: str) -> list[str]:
    prompts = list(given)
    if path:
        p = Path(path)
        if not p.is_file():
            raise ValueError(
                f"{what} file {path!r} does not exist: valid is a text file with one prompt per line"
            )
        try:
            prompts += [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except UnicodeDecodeError:
            raise ValueError(f"{what} file {path!r} is not UTF-8 text") from None
    return prompts


def _show(tokens: list[str]) -> str:
    """Tokens as one terminal-safe line: newline as \u21b5, tab as \u2192, other control characters as \\xNN."""
    out = []
    for ch in "".join(tokens):
        if ch in "\n\t":
            out.append("\u21b5" if ch == "\n" else "\u2192")
        else:
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 32 or ord(ch) == 127 else ch)
    return "".join(out)


def _print_examples(model, tok, sae, feature: int, exs: list, keep: float, full: bool) -> None:
    """Each example: value, minimal / whole context length, and the text from the minimal context on
    (\u2026 before it), or with ``full`` the whole context (\u2502 where the minimal one starts)."""
    import sys

    from ..observe.top_examples import minimal_context

    if not exs:
        print("(no examples)")
        return
    mins = minimal_context(model, tok, sae, feature, exs, keep)
    print(
        "value: activation in context (the whole window up to the \u27e6token\u27e7); min/full: tokens of the "
        f"shortest end keeping >= {keep * 100:g}% alone / of the whole context"
    )
    dim, undim = ("\x1b[2m", "\x1b[0m") if full and sys.stdout.isatty() else ("", "")
    for e, m in zip(exs, mins):
        t = [tok.decode([i]) for i in e.ids]
        s, i = m.start, e.index
        head = "" if not s else (f"{dim}{_show(t[:s])}{undim}\u2502" if full else "\u2026")
        text = f"{head}{_show(t[s:i])}\u27e6{_show(t[i : i + 1])}\u27e7{_show(t[i + 1 :])}"
        print(f"{e.value:10.3f}  {f'{m.length}/{m.full}':>7}  {text}")


def cmd_inspect(args) -> int:
    model, tok, sae = _load(args)
    ACTIONS[args.action](args, model, tok, sae)
    return 0


def _top_features(args, model, tok, sae) -> None:
    from ..observe import activity

    rows = activity.top_features(model, tok, sae, args.prompt, args.n, args.reduce, args.values)
    print(
        activity.format_ranking(rows, f"top features of {sae.name} on {args.prompt!r} ({args.reduce} token)")
    )


def _diff(args, model, tok, sae) -> None:
    from ..observe import activity

    pos = _lines(args.pos_file, args.pos, "positive prompts")
    neg = _lines(args.neg_file, args.neg, "negative prompts")
    rows = activity.differential_features(model, tok, sae, pos, neg, args.n, args.reduce, args.values)
    print(
        activity.format_ranking(
            rows, f"{len(pos)} positive vs {len(neg)} negative prompts ({args.reduce} token)"
        )
    )


def _scan(args, model, tok, sae) -> None:
    from ..observe import activity

    prompts = _lines(args.file, args.prompts, "scan prompts")
    vals = activity.scan(model, tok, sae, prompts, args.feature, args.reduce)
    for p, v in zip(prompts, vals.tolist()):
        print(f"{v:10.3f}  {p!r}")
    rate = activity.fire_rate(model, tok, sae, prompts, args.feature, args.reduce)
    print(f"fire rate ({args.reduce} token): {rate:.2f}")


def _examples(args, model, tok, sae) -> None:
    from ..observe.top_examples import top_examples

    extra = {"ctx": args.ctx, "batch_size": args.batch_size} if args.corpus else {}
    exs = top_examples(model, tok, sae, args.feature, args.corpus, k=args.k, **extra)
    _print_examples(model, tok, sae, args.feature, exs, args.keep, args.full)


def _logits(args, model, tok, sae) -> None:
    from ..observe import tracing

    le = tracing.logit_effects(model, tok, sae, args.feature, args.n)
    print(f"{'promoted':>28}   {'suppressed':>28}")
    for t, b in zip(le.top, le.bottom):
        print(f"{t.token!r:>18} {t.value:+9.3f}   {b.token!r:>18} {b.value:+9.3f}")


def _attribution(args, model, tok, sae) -> None:
    from ..objectives.kinds import make_objective
    from ..observe import tracing

    obj = make_objective(sae, args.feature, args.objective, args.reduce, norm_guard=not args.no_norm_guard)
    rows = tracing.attribution(model, tok, obj, args.prompt, args.position, method=args.method)
    print(tracing.format_attribution(rows))


def _steer(args, model, tok, sae) -> None:
    from ..observe import tracing

    for s in tracing.steering(model, tok, sae, args.feature, args.prompt, args.alphas, args.max_new_tokens):
        print(f"alpha {s.alpha:8.2f}  {args.prompt}\u2502{s.text!r}")


ACTIONS = {
    "top-features": _top_features,
    "diff": _diff,
    "scan": _scan,
    "examples": _examples,
    "logits": _logits,
    "attribution": _attribution,
    "steer": _steer,
}
"""``featuredream inspect ACTION``: one handler per action, ``(args, model, tokenizer, sae)``."""


def cmd_card(args) -> int:
    from ..engine.results import DreamResult, write_atomic
    from ..observe.card import STEER_PROMPT, neuronpedia_json
    from ..observe.card_html import feature_card

    out = check_out_path(args.out)
    js = check_out_path(args.json)
    dream = None
    if args.dream:
        p = Path(args.dream)
        if not p.is_file():
            raise ValueError(
                f"dream result {args.dream!r} does not exist: valid is a JSON file from 'featuredream dream'"
            )
        try:
            dream = DreamResult.load(p)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"dream result {args.dream!r} is not a featuredream result ({type(e).__name__})"
            ) from None
    model, tok, sae = _load(args)
    stats = None
    if args.corpus:
        from ..observe.top_examples import corpus_stats

        stats = corpus_stats(model, tok, sae, args.corpus)
    feature_card(
        model,
        tok,
        sae,
        args.feature,
        dream,
        out,
        stats=stats,
        steer_prompt=args.steer_prompt or STEER_PROMPT,
        alphas=args.alphas,
    )
    print(f"wrote {out}")
    if js is not None:
        write_atomic(
            js, json.dumps(neuronpedia_json(model, tok, sae, args.feature, dream, stats=stats), indent=1)
        )
        print(f"wrote {js}")
    return 0


COMMANDS = {"inspect": cmd_inspect, "card": cmd_card}
