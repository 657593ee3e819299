"""Argument checks shared by every layer (the bottom of the import order: it imports nothing of the package).

Each raises a ``ValueError`` that names the argument, the value given and what is valid.
"""

from __future__ import annotations

from collections.abc import Sequence


def check_int(name: str, value: object, lo: int = 1) -> int:
    """``value`` when it is an integer ``>= lo`` (a bool is not an integer here); ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name}={value!r} is invalid: valid is an integer >= {lo}")
    return value


def check_choice(value: str, valid: Sequence[str], name: str) -> str:
    """``value`` when it is one of ``valid``; ValueError listing them otherwise (``name``: what it is)."""
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}: valid are {', '.join(valid)}")
    return value
