"""The command line: one module per command family, shared options, and the entry point ``main``."""

from .main import main

__all__ = ["main"]
