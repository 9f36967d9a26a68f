"""Public object ids: ``<prefix><random>``, the shapes api.openai.com uses."""

from __future__ import annotations

import secrets
import string
import time

_ALPHABET = string.ascii_letters + string.digits


def random_token(n: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


def new_id(prefix: str, n: int = 24) -> str:
    """``new_id("file-")`` → ``file-Xa93...``; prefixes carry their own separator (``ftckpt_`` vs ``file-``)."""
    return prefix + random_token(n)


def now() -> int:
    """Unix seconds, the unit of every ``created_at`` on the wire."""
    return int(time.time())
