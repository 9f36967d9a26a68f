"""The export worker: claim an export, run it in ``python -m finetune.export.child``, watch it, record a crash.

Like fine-tuning jobs, the heavy work (torch, llama.cpp) happens in a child process: a crash or an OOM fails that
export only. An export whose worker died is taken over by the next worker and starts over (exports are
idempotent; partial outputs live in a scratch directory that is replaced).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import uuid

from finetune.process import death, last_error, poll_forever, supervise
from storage.exports import ExportStore
from storage.settings import Settings

log = logging.getLogger("tunegate.exports")


class ExportWorker:
    def __init__(self, settings: Settings, exports: ExportStore) -> None:
        self.settings, self.exports = settings, exports
        self.id = f"{socket.gethostname()}:{os.getpid()}:exports:{uuid.uuid4().hex[:8]}"
        self.lease_s = settings.worker.lease_seconds
        self._stop = threading.Event()
        self._settings_file = settings.write_for_child(f"exports-{os.getpid()}-{self.id.rsplit(':', 1)[1]}")

    def run_forever(self) -> None:
        try:
            poll_forever(self.run_once, self._stop, self.settings.worker.poll_seconds, "export worker")
        finally:
            self._settings_file.unlink(missing_ok=True)

    def stop(self) -> None:
        self._stop.set()

    def run_once(self) -> bool:
        export = self.exports.claim(self.id, self.lease_s)
        if export is None:
            return False
        log.info("export worker %s running %s", self.id, export.id)
        log_path = (self.settings.data_dir / "run" / f"{export.id}.log").resolve()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        code = supervise([sys.executable, "-m", "finetune.export.child", export.id, self.id, str(self._settings_file)],
                         log_path, lambda: self._keep_going(export.id), min(self.lease_s / 3, 2.0))
        if code:
            tail = last_error(log_path)
            self.exports.finish(export.id, self.id, status="failed", stage="failed",
                                error={"code": "export_process_died", "message": f"The export process {death(code)}. {tail}".strip()})
        return True

    def _keep_going(self, export_id: str) -> bool:
        return self.exports.heartbeat(export_id, self.id, self.lease_s) and not self._stop.is_set()


def start_in_thread(worker: ExportWorker) -> threading.Thread:
    thread = threading.Thread(target=worker.run_forever, name="tunegate-exports", daemon=True)
    thread.start()
    return thread
