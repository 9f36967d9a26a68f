"""The worker: claim a job, validate its files, run it in a child process, watch it, record the end.

It never imports torch: training happens in ``python -m finetune.child``, one process per job, so an OOM, a
CUDA error or a segfault there fails that job and nothing else. While the child runs, the worker renews the
job's lease; if the worker dies (kill -9) the child notices its parent is gone and exits, the lease runs out,
and the next worker to look takes the job over and resumes it from its last checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

from finetune import validation
from storage.errors import TunegateError
from storage.files import Files
from storage.jobs import JobStore
from storage.settings import Settings
from storage.tables import FineTuningJob

log = logging.getLogger("tunegate.worker")
KILL_GRACE_S = 10.0


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
            while not self._stop.is_set():
                try:
                    worked = self.run_once()
                except Exception:  # the loop outlives any one job's bookkeeping failure (e.g. database restart)
                    log.exception("worker iteration failed")
                    worked = False
                if not worked:
                    self._stop.wait(self.settings.worker.poll_seconds)
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
        with open(log_path, "ab") as log_file:
            child = subprocess.Popen(
                [sys.executable, "-m", "finetune.child", job_id, self.id, str(self._settings_file)],
                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            )
            code = self._watch(job_id, child)
        if code != 0:
            tail = _last_error(log_path)
            why = "was killed (out of memory?)" if code in (-signal.SIGKILL, 137) else f"exited with code {code}"
            self.jobs.fail(job_id, self.id, "training_process_died", f"The training process {why}. {tail}".strip())

    def _watch(self, job_id: str, child: subprocess.Popen[bytes]) -> int:
        """Renew the lease while the child runs; stop it if the job was cancelled or the lease lost."""
        interval = min(self.lease_s / 3, 2.0)
        while True:
            try:
                return child.wait(timeout=interval)
            except subprocess.TimeoutExpired:
                pass
            try:
                ours = self.jobs.heartbeat(job_id, self.id, self.lease_s)
                status = self.jobs.get(None, job_id).status
            except Exception:  # database hiccup: keep the child, try again next beat
                log.exception("heartbeat failed for %s", job_id)
                continue
            if not ours or status == "cancelled" or self._stop.is_set():
                # cancelled: done; lease lost: another worker owns it; shutting down: the next worker resumes it
                _terminate(child)
                return 0


def _terminate(child: subprocess.Popen[bytes]) -> None:
    child.terminate()
    try:
        child.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _last_error(log_path: Path) -> str:
    """The last meaningful line the child wrote (a Python exception, usually)."""
    try:
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    for line in reversed(lines):
        if "Error" in line or "Exception" in line:
            return line[:500]
    return lines[-1][:500] if lines else ""


def start_in_thread(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.run_forever, name="tunegate-worker", daemon=True)
    thread.start()
    return thread
