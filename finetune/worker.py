"""The worker: claim a job, validate its files, run it in a child process, watch it, record the end.

It never imports torch: training happens in ``python -m finetune.child``, one process per job, so an OOM, a
CUDA error or a segfault there fails that job and nothing else. While the child runs, the worker renews the
job's lease; if the worker dies (kill -9) the child notices its parent is gone and exits, the lease runs out,
and the next worker to look takes the job over and resumes it from its last checkpoint.

Each claim gets its own lease token, which the child fences every write with. When the lease cannot be renewed
for a whole lease period (database unreachable, the worker frozen) or another claim took it, the child is stopped:
two processes never train one job. A job whose run is interrupted ``worker.max_attempts`` times (its worker or
training process died each time) fails with the cause.
"""

from __future__ import annotations

import logging

from finetune import validation
from finetune.leased import LeasedWorker
from finetune.process import death, last_error
from storage.errors import TunegateError
from storage.files import Files
from storage.jobs import JobStore
from storage.settings import Settings
from storage.tables import FineTuningJob

log = logging.getLogger("tunegate.worker")
CRASH = "The training process"  # how a crash event begins: the cause a job that gives up names
TAKEN_OVER = "The worker running this job stopped responding"  # how a take-over event begins


class Worker(LeasedWorker):
    kind = "jobs"

    def __init__(self, settings: Settings, jobs: JobStore, files: Files) -> None:
        super().__init__(settings)
        self.jobs, self.files = jobs, files

    def claim(self, lease: str) -> FineTuningJob | None:
        return self.jobs.claim(lease, self.lease_s)

    def heartbeat(self, item_id: str, lease: str) -> bool:
        return self.jobs.heartbeat(item_id, lease, self.lease_s)

    def release(self, item: FineTuningJob, lease: str) -> None:
        self.jobs.release(item.id, lease)

    # --- one job ----------------------------------------------------------------------------------------
    def work(self, job: FineTuningJob, lease: str) -> None:
        if job.status == "validating_files":
            if not self._validate(job, lease):
                return
        if job.status == "running":
            if job.attempts >= self.settings.worker.max_attempts:
                self._give_up(job, lease)
                return
            self.jobs.add_event(
                job.id,
                f"{TAKEN_OVER} or its training process died; resuming (attempt "
                f"{job.attempts + 1} of {self.settings.worker.max_attempts}).",
                level="warn",
                lease=lease,
            )
        elif not self.jobs.advance(job.id, lease, ("queued",), status="running"):
            return  # cancelled or paused meanwhile
        else:
            self.jobs.add_event(job.id, "Fine-tuning job started", lease=lease)
        self._train(job.id, lease)

    def _give_up(self, job: FineTuningJob, lease: str) -> None:
        cause = self.jobs.last_message(job.id, CRASH) or "its worker stopped responding (killed, or lost its lease)"
        self.jobs.fail(
            job.id,
            lease,
            "training_process_died",
            f"The job was interrupted {job.attempts} times (worker.max_attempts = "
            f"{self.settings.worker.max_attempts}); the last cause: {cause}",
        )

    def _validate(self, job: FineTuningJob, lease: str) -> bool:
        self.jobs.add_event(
            job.id,
            f"Validating training file: {job.training_file}"
            + (f" and validation file: {job.validation_file}" if job.validation_file else ""),
        )
        try:
            validation.validate(job, self.files)
        except TunegateError as exc:
            self.jobs.fail(job.id, lease, exc.code or "invalid_training_file", exc.message, exc.param)
            return False
        if not self.jobs.advance(job.id, lease, ("validating_files",), status="queued"):
            return False
        self.jobs.add_event(job.id, "Files validated, moving job to queued state")
        job.status = "queued"
        return True

    def _train(self, job_id: str, lease: str) -> None:
        """The child trains; it is stopped when the job is cancelled or the lease is lost (``LeasedWorker``)."""
        log.info("worker %s running job %s", self.id, job_id)
        code = self.supervise_child(
            "finetune.child", job_id, lease, cancelled=lambda: self.jobs.get(None, job_id).status == "cancelled"
        )
        if code:  # the training process died (a crash, the OOM killer): the next claim retries it, up to the limit
            cause = f"{CRASH} {death(code)}. {last_error(self.log_path(job_id))}".strip()
            log.warning("job %s: %s", job_id, cause)
            self.jobs.add_event(job_id, cause, level="warn", lease=lease)
