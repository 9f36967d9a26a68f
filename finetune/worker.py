"""The worker: claim a job, validate its files, run it in a child process, watch it, record the end.

It never imports torch: training happens in ``python -m finetune.child``, one process per job, so an OOM, a
CUDA error or a segfault there fails that job and nothing else. While the child runs, the worker renews the
job's lease; if the worker dies (kill -9) the child notices its parent is gone and exits, the lease runs out,
and the next worker to look takes the job over and resumes it from its last checkpoint.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import uuid

from finetune import validation
from finetune.process import death, last_error, poll_forever, supervise
from storage.errors import TunegateError
from storage.files import Files
from storage.jobs import JobStore
from storage.settings import Settings
from storage.tables import FineTuningJob

log = logging.getLogger("tunegate.worker")


class Worker:
    def __init__(self, settings: Settings, jobs: JobStore, files: Files) -> None:
        self.settings, self.jobs, self.files = settings, jobs, files
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease_s = settings.worker.lease_seconds
        self._stop = threading.Event()
        self._settings_file = settings.write_for_child(f"worker-{os.getpid()}-{self.id.rsplit(':', 1)[1]}")

    # --- loop -------------------------------------------------------------------------------------------
    def run_forever(self) -> None:
        log.info("worker %s started", self.id)
        try:
            poll_forever(self.run_once, self._stop, self.settings.worker.poll_seconds, "worker")
        finally:
            self._settings_file.unlink(missing_ok=True)

    def stop(self) -> None:
        self._stop.set()

    def run_once(self) -> bool:
        job = self.jobs.claim(self.id, self.lease_s)
        if job is None:
            return False
        try:
            self._handle(job)
        finally:
            self.jobs.release(job.id, self.id)
        return True

    # --- one job ----------------------------------------------------------------------------------------
    def _handle(self, job: FineTuningJob) -> None:
        if job.status == "validating_files":
            if not self._validate(job):
                return
        if job.status == "running":
            self.jobs.add_event(job.id, "The worker running this job stopped responding; resuming on another worker.",
                                level="warn")
        elif not self.jobs.advance(job.id, self.id, ("queued",), status="running"):
            return  # cancelled or paused meanwhile
        else:
            self.jobs.add_event(job.id, "Fine-tuning job started")
        self._supervise(job.id)

    def _validate(self, job: FineTuningJob) -> bool:
        self.jobs.add_event(job.id, f"Validating training file: {job.training_file}"
                            + (f" and validation file: {job.validation_file}" if job.validation_file else ""))
        try:
            validation.validate(job, self.files)
        except TunegateError as exc:
            self.jobs.fail(job.id, self.id, exc.code or "invalid_training_file", exc.message, exc.param)
            return False
        if not self.jobs.advance(job.id, self.id, ("validating_files",), status="queued"):
            return False
        self.jobs.add_event(job.id, "Files validated, moving job to queued state")
        job.status = "queued"
        return True

    def _supervise(self, job_id: str) -> None:
        log.info("worker %s running job %s", self.id, job_id)
        log_path = (self.settings.data_dir / "run" / f"{job_id}.log").resolve()
        code = supervise([sys.executable, "-m", "finetune.child", job_id, self.id, str(self._settings_file)],
                         log_path, lambda: self._keep_going(job_id), min(self.lease_s / 3, 2.0))
        if code:
            tail = last_error(log_path)
            self.jobs.fail(job_id, self.id, "training_process_died", f"The training process {death(code)}. {tail}".strip())

    def _keep_going(self, job_id: str) -> bool:
        """Renew the lease; stop the child when the job was cancelled, the lease lost (another worker owns it) or
        this worker is shutting down (the next worker resumes the job)."""
        ours = self.jobs.heartbeat(job_id, self.id, self.lease_s)
        status = self.jobs.get(None, job_id).status
        return ours and status != "cancelled" and not self._stop.is_set()


def start_in_thread(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.run_forever, name="tunegate-worker", daemon=True)
    thread.start()
    return thread
