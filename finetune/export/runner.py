"""The export worker: claim an export, run it in ``python -m finetune.export.child``, watch it, record a crash.

Like fine-tuning jobs, the heavy work (torch, llama.cpp) happens in a child process: a crash or an OOM fails that
export only. An export whose worker died is taken over by the next worker and starts over (exports are
idempotent; partial outputs live in a scratch directory of that claim's own, so a stale child's cleanup never
touches its successor's). Each claim has its own lease token (the child fences its writes with it), and an export
that runs past ``worker.export_timeout_seconds`` is stopped and failed with ``export_timeout``.
"""

from __future__ import annotations

import logging
import time

from finetune.leased import LeasedWorker
from finetune.process import death, last_error
from storage.exports import ExportStore
from storage.settings import Settings
from storage.tables import Export

log = logging.getLogger("tunegate.exports")


class ExportWorker(LeasedWorker):
    kind = "exports"

    def __init__(self, settings: Settings, exports: ExportStore) -> None:
        super().__init__(settings)
        self.exports = exports

    def claim(self, lease: str) -> Export | None:
        return self.exports.claim(lease, self.lease_s)

    def heartbeat(self, item_id: str, lease: str) -> bool:
        return self.exports.heartbeat(item_id, lease, self.lease_s)

    def work(self, export: Export, lease: str) -> None:
        log.info("export worker %s running %s", self.id, export.id)
        timeout = self.settings.worker.export_timeout_seconds
        deadline = time.monotonic() + timeout
        code = self.supervise_child("finetune.export.child", export.id, lease, deadline=deadline)
        if code is None and time.monotonic() >= deadline:
            self.exports.finish(
                export.id,
                lease,
                status="failed",
                stage="failed",
                error={
                    "code": "export_timeout",
                    "message": f"The export ran longer than worker.export_timeout_seconds "
                    f"({timeout:g} s) and was stopped.",
                },
            )
        elif code:
            tail = last_error(self.log_path(export.id))
            self.exports.finish(
                export.id,
                lease,
                status="failed",
                stage="failed",
                error={"code": "export_process_died", "message": f"The export process {death(code)}. {tail}".strip()},
            )
