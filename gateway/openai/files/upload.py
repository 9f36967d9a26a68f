"""Streamed multipart parsing: the file part goes straight to a staged blob, never whole into memory.

python-multipart's push parser is fed the request body chunk by chunk; small form fields are kept
(capped), the one file part is written to disk as it arrives, and the size limit is enforced while
streaming (the first byte over it ends the upload), as is a stall limit (no bytes for that long ends it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from litestar.concurrency import sync_to_thread
from python_multipart.multipart import MultipartParser, parse_options_header

from storage.blobs import StagedBlob
from storage.errors import InvalidRequest, PayloadTooLarge

if TYPE_CHECKING:  # python-multipart declares its callbacks' TypedDict for type checkers only
    from python_multipart.multipart import MultipartCallbacks

MAX_FIELD_BYTES = 64 * 1024
MAX_PARTS = 32


@dataclass
class UploadForm:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    file_field: str | None = None


class _Collector:
    """Parser callbacks. File bytes are buffered per network chunk, then written off the event loop."""

    def __init__(self, staged: StagedBlob, max_bytes: int) -> None:
        self.staged, self.max_bytes = staged, max_bytes
        self.form = UploadForm()
        self.pending: list[bytes] = []
        self.size = 0
        self.parts = 0
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._is_file = False
        self._value = bytearray()

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_header_field": self._h_field,
            "on_header_value": self._h_value,
            "on_header_end": self._h_end,
            "on_headers_finished": self._headers_done,
        }

    def _part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise InvalidRequest(f"Too many form parts (more than {MAX_PARTS}).")
        self._headers, self._name, self._is_file, self._value = {}, None, False, bytearray()

    def _h_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _h_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _h_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field, self._header_value = b"", b""

    def _headers_done(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        if name is None:
            raise InvalidRequest("A form part has no name in its Content-Disposition header.")
        self._name = name.decode("utf-8", "replace")
        if b"filename" in options:
            if self.form.file_field is not None:
                raise InvalidRequest("Send exactly one file per upload.", param="file")
            self._is_file = True
            self.form.file_field = self._name
            self.form.filename = options[b"filename"].decode("utf-8", "replace")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            self.size += end - start
            if self.size > self.max_bytes:
                raise PayloadTooLarge(f"File is larger than the {self.max_bytes}-byte upload limit.", param="file")
            self.pending.append(data[start:end])
        else:
            self._value += data[start:end]
            if len(self._value) > MAX_FIELD_BYTES:
                raise InvalidRequest(f"Form field '{self._name}' is too long.", param=self._name)

    def _part_end(self) -> None:
        if not self._is_file and self._name is not None:
            self.form.fields[self._name] = self._value.decode("utf-8", "replace")

    def flush(self) -> None:
        chunk, self.pending = b"".join(self.pending), []
        if chunk:
            self.staged.write(chunk)


async def read_upload(
    content_type: str, body: AsyncIterator[bytes], staged: StagedBlob, max_bytes: int, stall_s: float
) -> UploadForm:
    kind, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise InvalidRequest("Uploads must be multipart/form-data with a 'file' part and a 'purpose' field.")
    collector = _Collector(staged, max_bytes)
    parser = MultipartParser(boundary, collector.callbacks())
    async for chunk in _until_stalled(body, stall_s):
        try:
            parser.write(chunk)
        except (InvalidRequest, PayloadTooLarge):
            raise
        except Exception as exc:  # python-multipart's MultipartParseError and friends
            raise InvalidRequest(f"Malformed multipart body: {exc}") from None
        if collector.pending:
            await sync_to_thread(collector.flush)
    parser.finalize()
    await sync_to_thread(collector.flush)  # the last bytes: an S3 part upload, off the event loop
    return collector.form


async def _until_stalled(body: AsyncIterator[bytes], stall_s: float) -> AsyncIterator[bytes]:
    """The body's chunks; an upload that sends nothing for ``stall_s`` seconds is ended (its staged bytes go)."""
    chunks = aiter(body)
    while True:
        try:
            async with asyncio.timeout(stall_s):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise InvalidRequest(
                f"The upload stalled: no bytes arrived for {stall_s:g} seconds.", param="file", code="upload_stalled"
            ) from None
        yield chunk
