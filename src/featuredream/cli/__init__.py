"""The command line: the entry point ``main``, one module per command family (``dream``, ``direction``,
``inspect_cmd``, ``stats``, ``train``, ``sweep``), the options shared by them and generated from the config
dataclasses (``options``) and what a dream prints (``printout``). The only room that prints.

May import every room below it; it is the top of the stack.
"""

from .main import main

__all__ = ["main"]
