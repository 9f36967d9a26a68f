"""The one worker core for leased background work: fine-tuning jobs, exports, eval runs (and what comes next).

A ``LeasedWorker`` polls, claims one item under a fresh lease token (``storage.leases.claim_token``: the fencing
token every durable write of that claim carries), does the kind's work, and releases. Work that runs in a child
process is supervised by ``supervise_child``: the lease is renewed from the worker while the child runs, and the
child is stopped when the lease is lost (another claim holds it), cannot be renewed for a whole lease period
(another worker may hold it by now), the item was cancelled, the kind's deadline passed, or the worker stops.
Work done in the worker's own thread holds its lease with ``heartbeat``, a renewal thread of its own, so a slow
step never outlives the lease unnoticed.

Each kind adds only its own step: what to claim, how to renew, what to do with the item.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from finetune.process import poll_forever, supervise
from storage.leases import claim_token
from storage.settings import Settings

log = logging.getLogger("tunegate.worker")


class LeasedWorker(ABC):
    kind: ClassVar[str]  # "jobs", "exports", "evals": in the worker id and the log

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.id = f"{socket.gethostname()}:{os.getpid()}:{self.kind}:{uuid.uuid4().hex[:8]}"
        self.lease_s = settings.worker.lease_seconds
        self._stop = threading.Event()
        self._settings_file: Path | None = None

    # --- the kind's part ---------------------------------------------------------------------------------
    @abstractmethod
    def claim(self, lease: str) -> Any | None:
        """Claim the next item under ``lease`` (None: nothing to do)."""

    @abstractmethod
    def work(self, item: Any, lease: str) -> None:
        """Do the item's work under its lease."""

    @abstractmethod
    def heartbeat(self, item_id: str, lease: str) -> bool:
        """Renew the lease; False when it is no longer held under ``lease``."""

    def release(self, item: Any, lease: str) -> None:  # noqa: B027 - a default hook: most kinds release by finishing
        """After ``work``: give the lease back if the item is not finished (default: finishing released it)."""

    # --- the loop ----------------------------------------------------------------------------------------
    def run_forever(self) -> None:
        log.info("%s worker %s started", self.kind, self.id)
        try:
            poll_forever(self.run_once, self._stop, self.settings.worker.poll_seconds, f"{self.kind} worker")
        finally:
            if self._settings_file is not None:
                self._settings_file.unlink(missing_ok=True)

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def idle(self, seconds: float) -> bool:
        """Wait ``seconds`` or until the worker stops (True then)."""
        return self._stop.wait(seconds)

    def run_once(self) -> bool:
        lease = claim_token(self.id)
        item = self.claim(lease)
        if item is None:
            return False
        try:
            self.work(item, lease)
        finally:
            self.release(item, lease)
        return True

    # --- helpers for the kinds ---------------------------------------------------------------------------
    def log_path(self, item_id: str) -> Path:
        path = (self.settings.data_dir / "run" / f"{item_id}.log").resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def supervise_child(
        self,
        module: str,
        item_id: str,
        lease: str,
        *,
        cancelled: Callable[[], bool] = lambda: False,
        deadline: float | None = None,
    ) -> int | None:
        """Run ``python -m module <item id> <lease> <settings file>`` under the lease; its exit code, or None when
        it was stopped (lease lost or unrenewable, ``cancelled()``, ``deadline`` (monotonic) passed, stopping)."""
        if self._settings_file is None:
            self._settings_file = self.settings.write_for_child(f"{self.kind}-{self.id.rsplit(':', 1)[1]}")
        still_ours = self._renewal(item_id, lambda: self.heartbeat(item_id, lease) and not cancelled())

        def keep_going() -> bool:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            return still_ours() and not self._stop.is_set()

        return supervise(
            [sys.executable, "-m", module, item_id, lease, str(self._settings_file)],
            self.log_path(item_id),
            keep_going,
            min(self.lease_s / 3, 2.0),
        )

    def _renewal(self, item_id: str, renew: Callable[[], bool]) -> Callable[[], bool]:
        """The one renewal rule: ``renew()`` says whether the work is still ours; when it fails (the database is
        away), the work goes on while the last success is less than a lease period ago — until then no other claim
        can have taken the item."""
        renewed = time.monotonic()

        def still_ours() -> bool:
            nonlocal renewed
            try:
                ours = renew()
            except Exception:
                log.exception("%s %s: lease renewal failed", self.kind, item_id)
                return time.monotonic() - renewed < self.lease_s
            renewed = time.monotonic()
            return ours

        return still_ours

    @contextlib.contextmanager
    def heartbeat_thread(self, item_id: str, lease: str) -> Iterator[threading.Event]:
        """Hold the lease from a thread of its own while in-process work runs; the yielded event is set once the
        lease is lost or could not be renewed for a whole lease period (the work should stop; its writes are
        fenced anyway)."""
        lost, done = threading.Event(), threading.Event()

        still_ours = self._renewal(item_id, lambda: self.heartbeat(item_id, lease))

        def renew() -> None:
            while not done.wait(min(self.lease_s / 3, 2.0)):
                if not still_ours():
                    lost.set()
                    return

        thread = threading.Thread(target=renew, name=f"{self.kind}-lease-{item_id}", daemon=True)
        thread.start()
        try:
            yield lost
        finally:
            done.set()
            thread.join()


class Workers:
    """The workers of one process, each in its own thread: what ``tunegate serve`` embeds and ``tunegate worker``
    runs."""

    def __init__(self, workers: list[LeasedWorker | Any]) -> None:
        self.workers = workers
        self.threads: list[threading.Thread] = []

    def start(self) -> Workers:
        for worker in self.workers:
            thread = threading.Thread(
                target=worker.run_forever, name=f"tunegate-{getattr(worker, 'kind', 'worker')}", daemon=True
            )
            thread.start()
            self.threads.append(thread)
        return self

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()

    def join(self, timeout: float | None = None) -> None:
        for thread in self.threads:
            thread.join(timeout)


def start_workers(settings: Settings, services: Any) -> Workers:
    """Every kind of worker over one ``Services``, started: fine-tuning jobs, eval runs, exports, batches."""
    from finetune.batches.runner import BatchWorker
    from finetune.evals.runner import EvalWorker
    from finetune.export.runner import ExportWorker
    from finetune.worker import Worker

    return Workers(
        [
            Worker(settings, services.jobs, services.files),
            EvalWorker(settings, services.db, services.blobs),
            ExportWorker(settings, services.exports),
            BatchWorker(settings, services.db, services.blobs),
        ]
    ).start()
