"""Read a data file as (line, example, value) records: JSONL, or one JSON array (LLaMA-Factory's usual layout).

Memory is bounded by ``max_example_bytes``, never by the file: JSONL is read one line at a time (a longer line
is an ``example_too_large`` problem and is skipped unread), and a JSON array is decoded element by element with
``raw_decode`` over a sliding window of the file, so every example still gets the line it starts on and an error
the same line and column as if the file were decoded whole. An element larger than the limit stops the read.

UTF-8 is checked strictly (a BOM is allowed): line by line for JSONL, in a first pass over the whole file for an
array (so that a bad byte anywhere is reported as ``encoding``, whatever JSON comes first).
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from finetune.formats.problems import Problem

_WS = " \t\r\n"
_NOT_WS = re.compile(r"[^ \t\r\n]")
_BOM = b"\xef\xbb\xbf"
CHUNK = 1 << 20
DEFAULT_MAX_EXAMPLE_BYTES = 2 * 1024 * 1024
# A decode error this close to the window's end may only mean the element goes on past it: read more first.
_SLACK = 16


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


def read_records(path: Path, max_example_bytes: int = DEFAULT_MAX_EXAMPLE_BYTES) -> Iterator[Record | Problem]:
    """Yield each record, or a Problem for a line that is unusable. Raises Unreadable for fatal problems."""
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip(_BOM).lstrip(_WS.encode())
    if not head:
        raise Unreadable(Problem("empty_file", "The file is empty: it holds no examples."))
    if head.startswith(b"["):
        _check_utf8(path)
        with open(path, "rb") as fh:
            yield from _ArrayReader(fh, max_example_bytes).records()
    else:
        yield from _read_jsonl(path, max_example_bytes)


def too_large(limit: int, line: int, example: int) -> Problem:
    return Problem(
        "example_too_large", f"Example is larger than the {limit}-byte limit for one example.", line, example
    )


def _decode(raw: bytes, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Unreadable(
            Problem(
                "encoding",
                f"The file is not UTF-8: invalid byte 0x{raw[exc.start]:02x} at column {exc.start + 1}.",
                line,
            )
        ) from None


def _too_deep(line: int, example: int) -> Problem:
    return Problem("invalid_json", "Not valid JSON: nested too deeply.", line, example)


def _read_jsonl(path: Path, limit: int) -> Iterator[Record | Problem]:
    example = line_no = 0
    with open(path, "rb") as fh:
        while raw := fh.readline(limit + 1):
            line_no += 1
            if line_no == 1:
                raw = raw.removeprefix(_BOM)
            if len(raw) > limit and not raw.endswith(b"\n"):
                example += 1
                while (rest := fh.readline(CHUNK)) and not rest.endswith(b"\n"):
                    pass  # skip the rest of the line without holding it
                yield too_large(limit, line_no, example)
                continue
            text = _decode(raw, line_no)
            if not text.strip():
                continue
            example += 1
            try:
                yield Record(line_no, example, json.loads(text))
            except json.JSONDecodeError as exc:
                yield Problem("invalid_json", f"Not valid JSON: {exc.msg} (column {exc.colno}).", line_no, example)
            except RecursionError:
                yield _too_deep(line_no, example)


def _check_utf8(path: Path) -> None:
    """Decode the whole file once, a chunk at a time; Unreadable names the first bad byte's line."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    newlines = 0
    with open(path, "rb") as fh:
        _skip_bom(fh)
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:  # exc.object is the decoder's pending bytes + this chunk
                line = newlines + exc.object.count(b"\n", 0, exc.start) + 1
                raise Unreadable(
                    Problem("encoding", f"The file is not UTF-8: invalid byte 0x{exc.object[exc.start]:02x}.", line)
                ) from None
            newlines += chunk.count(b"\n")
    try:
        decoder.decode(b"", True)
    except UnicodeDecodeError as exc:  # the file ends inside a character
        raise Unreadable(
            Problem("encoding", f"The file is not UTF-8: invalid byte 0x{exc.object[exc.start]:02x}.", newlines + 1)
        ) from None


def _skip_bom(fh: BinaryIO) -> None:
    fh.seek(3 if fh.read(3) == _BOM else 0)


class _ArrayReader:
    """The elements of one top-level JSON array, through a window ``buf`` of the (already UTF-8 checked) file.

    ``buf[0]`` sits at line ``base_line``, column ``base_col + 1`` of the file; ``line`` is the line at
    ``buf[counted_to]`` (newlines are counted once, as the read moves on).
    """

    def __init__(self, fh: BinaryIO, limit: int) -> None:
        self.fh, self.limit = fh, limit
        self.utf8 = codecs.getincrementaldecoder("utf-8")("strict")
        self.decoder = json.JSONDecoder()
        self.buf, self.pos, self.eof = "", 0, False
        self.base_line, self.base_col = 1, 0
        self.line, self.counted_to = 1, 0
        _skip_bom(fh)

    def records(self) -> Iterator[Record]:
        self._peek()
        self.pos += 1  # past '['
        if self._peek() == "]":
            return
        example = 0
        while True:
            example += 1
            line = self.line_at(self.pos)
            value, self.pos = self._value(example)
            yield Record(line, example, value)
            after = self._peek()
            if after == ",":
                self.pos += 1
                self._peek()
                continue
            if after == "]":
                at = self.line_at(self.pos)
                self.pos += 1
                if self._peek() != "":
                    raise Unreadable(Problem("invalid_json", "Unexpected data after the closing ']'.", at))
                return
            raise Unreadable(
                Problem("invalid_json", f"Expected ',' or ']' after example {example}.", self.line_at(self.pos))
            )

    def _value(self, example: int) -> tuple[Any, int]:
        """The element at ``pos`` and where it ends, reading more of the file until it is whole."""
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
                # a number near the window's end may go on ("2" of "2.5e3"); an object, array or string has ended
                if self.eof or isinstance(value, (dict, list, str)) or end + _SLACK < len(self.buf):
                    if end - self.pos > self.limit:
                        raise Unreadable(too_large(self.limit, self.line_at(self.pos), example))
                    return value, end
            except json.JSONDecodeError as exc:
                cut_short = exc.pos >= len(self.buf) - _SLACK or exc.msg.startswith("Unterminated string")
                if self.eof or not cut_short:
                    line = self.base_line + exc.lineno - 1
                    col = exc.colno + (self.base_col if exc.lineno == 1 else 0)
                    raise Unreadable(
                        Problem("invalid_json", f"Not valid JSON: {exc.msg} (column {col}).", line, example)
                    ) from None
            except RecursionError:
                raise Unreadable(_too_deep(self.line_at(self.pos), example)) from None
            if len(self.buf) - self.pos > self.limit:
                raise Unreadable(too_large(self.limit, self.line_at(self.pos), example))
            self._more(len(self.buf) - self.pos)

    def _peek(self) -> str:
        """Skip whitespace (reading on as needed); the next character, or "" at the end of the file."""
        while True:
            found = _NOT_WS.search(self.buf, self.pos)
            self.pos = found.start() if found else len(self.buf)
            if found or self.eof:
                return self.buf[self.pos] if found else ""
            self._more(0)

    def _more(self, held: int) -> None:
        """Drop what was read, then read at least as much again as is ``held`` (so re-decoding stays linear)."""
        self.line_at(self.pos)
        newline = self.buf.rfind("\n", 0, self.pos)
        self.base_col = self.pos - newline - 1 if newline >= 0 else self.base_col + self.pos
        self.base_line = self.line
        self.buf, self.pos, self.counted_to = self.buf[self.pos :], 0, 0
        raw = self.fh.read(max(CHUNK, held))
        self.eof = not raw
        self.buf += self.utf8.decode(raw, self.eof)

    def line_at(self, at: int) -> int:
        self.line += self.buf.count("\n", self.counted_to, at)
        self.counted_to = at
        return self.line
