"""``featuredream dream | score | train-sae | stats | inspect | card``; options come from the config dataclasses.

Each command family is a module (:mod:`.dream`, :mod:`.train`, :mod:`.stats`, :mod:`.inspect_cmd`, :mod:`.sweep`) with
``register(subparsers)`` and ``COMMANDS``; the options they share are in :mod:`.options`.

Bad input prints one line (``featuredream: error: ...``) on stderr and exits 2; an unexpected error prints
one line naming it and exits 1 (``featuredream -v ...`` prints its traceback); Ctrl-C during a dream
writes the best-so-far result and exits 130.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from . import dream, inspect_cmd, stats, sweep, train

log = logging.getLogger("featuredream")

FAMILIES = (dream, train, stats, inspect_cmd, sweep)
"""The command modules, in the order their commands are listed: each has ``register`` and ``COMMANDS``."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (no usage dump) and exits 2."""

    def error(self, message: str):
        self.exit(2, f"featuredream: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="featuredream", description=__doc__.split("\n")[0])
    p.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging, and the full traceback of an error"
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for family in FAMILIES:
        family.register(sub)
    return p


def _setup_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("featuredream").setLevel(level)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e).strip() else type(e).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed
        return int(e.code or 0)
    _setup_logging(args.verbose)
    commands = {name: cmd for family in FAMILIES for name, cmd in family.COMMANDS.items()}
    try:
        return commands[args.command](args)
    except ValueError as e:
        print(f"featuredream: error: {_first_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("featuredream: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a bug or an environment problem: one line, traceback on -v
        if args.verbose:
            traceback.print_exc()
            print(f"featuredream: error: unexpected {type(e).__name__}: {_first_line(e)}", file=sys.stderr)
        else:
            print(
                f"featuredream: error: unexpected {type(e).__name__}: {_first_line(e)} "
                "(rerun as 'featuredream -v ...' for the full traceback)",
                file=sys.stderr,
            )
        return 1


if __name__ == "__main__":
    sys.exit(main())
