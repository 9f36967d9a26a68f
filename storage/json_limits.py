"""Bounds on JSON text before anything decodes it: its nesting depth, and the length of a JSON Lines line.

Python's JSON decoders recurse (``json.loads`` and msgspec raise ``RecursionError`` near 1 000 levels), so the raw
bytes are measured first: strings are cut out, everything but brackets dropped, then the innermost ``[]`` / ``{}``
pairs are removed round by round — a text nested ``d`` deep is empty after ``d`` rounds, each a few C-speed passes.

Used by the gateway's body check (``gateway.body_limits``) and by the workers that read tenants' JSON Lines files
(batch input files, eval files), which must not import the gateway.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import IO

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")


def depth_problem(raw: bytes, limit: int) -> str | None:
    """Why the JSON text ``raw`` must not be decoded: nested deeper than ``limit``, or brackets that do not pair up;
    None when it may be."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return None
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    for _ in range(limit):  # one round removes every innermost pair, and only those
        paired = brackets.replace(b"[]", b"\0").replace(b"{}", b"\1").translate(None, b"\0\1")
        if not paired:
            return None
        if len(paired) == len(brackets):
            return "its brackets do not pair up"
        brackets = paired
    return f"it nests arrays or objects more than {limit} levels deep"


def capped_lines(fh: IO[bytes], max_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """(1-based line number, raw line) of every non-blank line of ``fh``, streamed; ``None`` for a line longer than
    ``max_bytes`` (its newline not counted), which is skipped without ever being held whole in memory."""
    number = 0
    while raw := fh.readline(max_bytes + 1):
        number += 1
        if len(raw) > max_bytes and not (len(raw) == max_bytes + 1 and raw.endswith(b"\n")):
            while raw and not raw.endswith(b"\n"):  # skip to the end of this line, a bounded piece at a time
                raw = fh.readline(max_bytes + 1)
            yield number, None
        elif raw.strip():
            yield number, raw
