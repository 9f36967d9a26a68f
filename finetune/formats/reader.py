"""Read a data file as (line, example, value) records: JSONL, or one JSON array (LLaMA-Factory's usual layout).

UTF-8 is checked strictly (a BOM is allowed). JSONL is streamed line by line; a JSON array is parsed element by
element with ``raw_decode`` so every example still gets the line it starts on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.formats.problems import Problem

_WS = " \t\r\n"


@dataclass(frozen=True)
class Record:
    line: int
    example: int
    value: Any


class Unreadable(Exception):
    """The file cannot be read any further; carries the problem that stopped it."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


def read_records(path: Path) -> Iterator[Record | Problem]:
    """Yield each record, or a Problem for a line that is not JSON. Raises Unreadable for fatal problems."""
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf").lstrip(_WS.encode())
    if not head:
        raise Unreadable(Problem("empty_file", "The file is empty: it holds no examples."))
    if head.startswith(b"["):
        yield from _read_array(path)
    else:
        yield from _read_jsonl(path)


def _decode(raw: bytes, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Unreadable(
            Problem("encoding", f"The file is not UTF-8: invalid byte 0x{raw[exc.start]:02x} at column {exc.start + 1}.", line)
        ) from None


def _read_jsonl(path: Path) -> Iterator[Record | Problem]:
    example = 0
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if line_no == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            text = _decode(raw, line_no)
            if not text.strip():
                continue
            example += 1
            try:
                yield Record(line_no, example, json.loads(text))
            except json.JSONDecodeError as exc:
                yield Problem("invalid_json", f"Not valid JSON: {exc.msg} (column {exc.colno}).", line_no, example)


def _read_array(path: Path) -> Iterator[Record | Problem]:
    raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise Unreadable(Problem("encoding", f"The file is not UTF-8: invalid byte 0x{raw[exc.start]:02x}.", line)) from None
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0) + 1  # past '['
    line, counted_to, example = 1, 0, 0

    def line_at(at: int) -> int:
        nonlocal line, counted_to
        line += text.count("\n", counted_to, at)
        counted_to = at
        return line

    pos = _skip_ws(text, pos)
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        example += 1
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise Unreadable(
                Problem("invalid_json", f"Not valid JSON: {exc.msg} (column {exc.colno}).", exc.lineno, example)
            ) from None
        yield Record(line_at(pos), example, value)
        pos = _skip_ws(text, end)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
            continue
        if pos < len(text) and text[pos] == "]":
            if _skip_ws(text, pos + 1) != len(text):
                raise Unreadable(Problem("invalid_json", "Unexpected data after the closing ']'.", line_at(pos)))
            return
        raise Unreadable(
            Problem("invalid_json", f"Expected ',' or ']' after example {example}.", line_at(min(pos, len(text))))
        )


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    return pos
