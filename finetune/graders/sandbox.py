"""Python graders run here: a pool of warm, locked-down interpreter processes (``sandbox_child.py``).

What a grader can do is bounded by the child (no network, no file system beyond Python's own, no new processes,
memory/CPU/file-size rlimits — see its docstring); this side bounds time and output and keeps the pool healthy:

- a worker is bound to one owner's one grader source (an organization never shares an interpreter, or its
  globals, with another or with a different grader) and stays warm for the next batch of that grader;
  an idle worker of another key is replaced when the pool is full;
- rows go to the child in batches of ``CHUNK`` per round trip, and each row's reply must come within
  ``timeout_seconds``; a row that times out, a child that dies (segfault, ``os._exit``, SIGXCPU, the kernel's OOM
  kill) or replies with garbage makes *that row* errored with the reason; the worker is killed and replaced, and
  the rest of the batch goes to a fresh worker. Nothing a grader does raises here.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger("tunegate.graders")
CHILD = Path(__file__).with_name("sandbox_child.py")
CHUNK = 256


@dataclass(frozen=True)
class Limits:
    timeout_seconds: float = 10.0  # wall clock per row
    cpu_seconds: float = 10.0  # CPU per row (SIGXCPU past it)
    memory_mib: int = 1024  # address space of the interpreter
    file_bytes: int = 1 << 20  # largest file it may write in its scratch directory
    reply_bytes: int = 64 << 10  # one reply line


@dataclass(frozen=True)
class Reply:
    score: float | None = None
    error: str | None = None


class _Died(Exception):
    pass


@dataclass
class _Worker:
    proc: subprocess.Popen[bytes]
    scratch: str
    key: tuple[str, str] | None = None
    protections: list[str] = field(default_factory=list)
    buffer: bytes = b""
    used_at: float = 0.0

    def send(self, payload: bytes) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(payload)
            self.proc.stdin.flush()
        except OSError:
            raise _Died(self.death()) from None

    def line(self, timeout: float, limit: int) -> bytes | None:
        """The next reply line, or None after ``timeout`` seconds; _Died if the child is gone."""
        assert self.proc.stdout is not None
        fd, deadline = self.proc.stdout.fileno(), time.monotonic() + timeout
        while (end := self.buffer.find(b"\n")) < 0:
            if len(self.buffer) > limit:
                raise _Died(f"the grader's reply exceeded {limit} bytes")
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise _Died(self.death())
            self.buffer += chunk
        line, self.buffer = self.buffer[:end], self.buffer[end + 1 :]
        return line

    def death(self) -> str:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "the grader's interpreter stopped answering"
        if code < 0:
            name = signal.Signals(-code).name
            why = {
                "SIGXCPU": "exceeded its CPU time limit",
                "SIGSEGV": "crashed (segmentation fault)",
                "SIGKILL": "was killed (memory exhausted?)",
            }.get(name, f"was killed by {name}")
            return f"the grader's interpreter {why}"
        return f"the grader's interpreter exited (code {code})"

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: only this child (and nothing it made)
            except ProcessLookupError:
                pass
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        shutil.rmtree(self.scratch, ignore_errors=True)


class SandboxPool:
    """Thread-safe; ``grade`` never raises for anything the grader does."""

    def __init__(self, limits: Limits | None = None, size: int = 4) -> None:
        self.limits, self.size = limits or Limits(), size
        self._idle: list[_Worker] = []
        self._busy = 0
        self._cond = threading.Condition()
        self._closed = False
        atexit.register(self.close)

    def grade(self, owner: str, source: str, rows: list[tuple[dict, dict]]) -> list[Reply]:
        """``grade(sample, item)`` of ``source`` for each (sample, item), as ``owner`` (an organization id)."""
        key = (owner, hashlib.sha256(source.encode()).hexdigest())
        replies: list[Reply] = []
        while len(replies) < len(rows):
            worker = self._acquire(key)
            healthy = False
            try:
                chunk = rows[len(replies) : len(replies) + CHUNK]
                got, healthy = self._run(worker, source, chunk)
                replies += got
            finally:
                self._release(worker, healthy)
        return replies

    def _run(self, worker: _Worker, source: str, rows: list[tuple[dict, dict]]) -> tuple[list[Reply], bool]:
        """Replies for a prefix of ``rows`` (all of them when the worker stays healthy)."""
        try:
            payload = json.dumps({"source": source, "rows": rows}, ensure_ascii=False).encode() + b"\n"
        except (TypeError, ValueError) as exc:
            return [Reply(error=f"the item could not be passed to the grader: {exc}")] * len(rows), True
        got: list[Reply] = []
        try:
            worker.send(payload)
            for _ in rows:
                line = worker.line(self.limits.timeout_seconds, self.limits.reply_bytes)
                if line is None:
                    got.append(Reply(error=f"the grader timed out after {self.limits.timeout_seconds:g} s"))
                    return got, False
                got.append(_reply(line))
        except _Died as exc:
            got.append(Reply(error=str(exc)))
            return got, False
        return got, True

    # --- the pool --------------------------------------------------------------------------------------------
    def _acquire(self, key: tuple[str, str]) -> _Worker:
        with self._cond:
            while True:
                if self._closed:
                    raise RuntimeError("the sandbox pool is closed")
                mine = [w for w in self._idle if w.key == key]
                if mine:
                    self._idle.remove(mine[0])
                    self._busy += 1
                    return mine[0]
                if len(self._idle) + self._busy < self.size or self._idle:
                    evicted = None
                    if len(self._idle) + self._busy >= self.size:
                        evicted = min(self._idle, key=lambda w: w.used_at)
                        self._idle.remove(evicted)
                    self._busy += 1
                    break
                self._cond.wait()
        if evicted is not None:
            evicted.kill()
        try:
            worker = self._spawn()
        except BaseException:
            with self._cond:
                self._busy -= 1
                self._cond.notify()
            raise
        worker.key = key
        return worker

    def _release(self, worker: _Worker, healthy: bool) -> None:
        if not healthy:
            worker.kill()
        with self._cond:
            self._busy -= 1
            if healthy and not self._closed:
                worker.used_at = time.monotonic()
                self._idle.append(worker)
            elif healthy:
                worker.kill()
            self._cond.notify()

    def _spawn(self) -> _Worker:
        scratch = tempfile.mkdtemp(prefix="tunegate-grader-")
        env = {
            "PATH": "/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "HOME": scratch,
            "TMPDIR": scratch,
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        limits = json.dumps(asdict(self.limits))
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", str(CHILD), limits],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=scratch,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
        worker = _Worker(proc, scratch)
        try:
            line = worker.line(30.0, self.limits.reply_bytes)
            if line is None:
                raise _Died("the sandbox did not start in 30 s")
            worker.protections = json.loads(line)["ready"]
        except (_Died, ValueError, KeyError, TypeError) as exc:
            worker.kill()
            raise RuntimeError(f"the grader sandbox failed to start: {exc}") from None
        return worker

    def protections(self) -> list[str]:
        """What a fresh worker could lock down on this machine (network namespace, landlock, uid)."""
        worker = self._spawn()
        try:
            return worker.protections
        finally:
            worker.kill()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.kill()


def _reply(line: bytes) -> Reply:
    try:
        data = json.loads(line)
        if "score" in data:
            return Reply(score=float(data["score"]))
        return Reply(error=str(data["error"])[:2000])
    except (ValueError, KeyError, TypeError):
        return Reply(error="the grader's interpreter sent an unreadable reply")
