"""Large generated uploads and the memory of the gateway that takes them (tests and bench/upload_memory.py).

The bodies are generated while they are sent (never whole in memory or on disk), as multipart/form-data.
``RssSampler`` follows the resident memory of a process and all its descendants from /proc (Linux).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

MIB = 1024 * 1024
BOUNDARY = "tunegateboundary0123456789"


def chat_examples(n: int = 64) -> list[bytes]:
    """Distinct ~1 KiB supervised chat examples, each one compact JSON object."""
    return [
        json.dumps(
            {
                "messages": [
                    {"role": "system", "content": "You answer in one paragraph."},
                    {"role": "user", "content": f"Question {i}: " + "why is the sky blue? " * 20},
                    {"role": "assistant", "content": f"Answer {i}: " + "because of Rayleigh scattering. " * 20},
                ]
            }
        ).encode()
        for i in range(n)
    ]


def jsonl_body(size: int) -> Iterator[bytes]:
    """A JSONL file of at most ``size`` bytes."""
    block = b"".join(e + b"\n" for e in chat_examples())
    yield from _repeat(block, size - size % len(block) or len(block))


def array_body(size: int, examples: list[bytes] | None = None) -> Iterator[bytes]:
    """One JSON array of at most ``size`` bytes, one element per line (``examples`` repeated)."""
    block = b"".join(e + b",\n" for e in (examples or chat_examples()))
    n_blocks = (size - 4) // len(block)
    yield b"[\n"
    yield from _repeat(block, (n_blocks - 1) * len(block))
    yield block[:-2] + b"\n]\n"


def _repeat(block: bytes, total: int) -> Iterator[bytes]:
    big = block * max(1, MIB // len(block))
    sent = 0
    while sent < total:
        piece = big[: total - sent]
        sent += len(piece)
        yield piece


def multipart(content: Iterator[bytes], *, purpose: str = "fine-tune", filename: str = "data.jsonl") -> Iterator[bytes]:
    yield (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n{purpose}\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    yield from content
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def upload(url: str, key: str, content: Iterator[bytes], filename: str, timeout: float = 600) -> httpx.Response:
    """POST /v1/files with a generated body, streamed."""
    return httpx.post(
        f"{url}/v1/files",
        content=multipart(content, filename=filename),
        timeout=timeout,
        headers={"authorization": f"Bearer {key}", "content-type": f"multipart/form-data; boundary={BOUNDARY}"},
    )


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            pass
    return pids


def tree_rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` and every descendant, now. A child that has not exec'd yet (its command line is
    still its parent's) shares the parent's pages (vfork, or fork's copy-on-write): it is not counted twice."""
    total = 0
    for p in _tree(pid):
        try:
            if p != pid and Path(f"/proc/{p}/cmdline").read_bytes() == Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            total += _status_kib(p, "VmRSS")
        except FileNotFoundError:
            pass
    return total


@dataclass
class Peak:
    idle_mib: float  # the tree's RSS when sampling began
    peak_mib: float  # the highest sampled tree RSS (or the main process's kernel high-water mark, if higher)

    @property
    def growth_mib(self) -> float:
        return self.peak_mib - self.idle_mib


class RssSampler:
    """``with RssSampler(pid) as s: ...`` then ``s.result``: idle and peak RSS of the process tree, in MiB."""

    def __init__(self, pid: int, every_s: float = 0.01) -> None:
        self.pid, self.every_s = pid, every_s
        self._stop = threading.Event()
        self._peak = 0
        self.result: Peak | None = None

    def __enter__(self) -> RssSampler:
        try:  # "5" resets the kernel's peak-RSS mark (VmHWM) to the current RSS
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError:
            pass
        self._idle = tree_rss_kib(self.pid)
        self._hwm_before = _status_kib(self.pid, "VmHWM")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, tree_rss_kib(self.pid))
            time.sleep(self.every_s)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        hwm = _status_kib(self.pid, "VmHWM")  # exact for the main process, where sampling may miss a spike
        peak = max(self._peak, hwm if hwm > self._hwm_before else 0)
        self.result = Peak(self._idle / 1024, peak / 1024)
