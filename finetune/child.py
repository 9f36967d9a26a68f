"""A job's child process: ``python -m finetune.child <job id> <worker id> <settings.json>``.

It resolves the job's settings for the real device, runs the recipe (resuming from the last trainer
checkpoint when there is one), and records everything through the job store: events, checkpoints as
servable models, the final model; the job-end evaluation and the results CSV are ``finetune.evals.job_end``'s. Any
exception fails the job with a readable error. It exits by itself when its worker disappears (the lease then moves the
job to another worker).

Exactly once: every durable write is fenced by the claim's lease token (``storage.leases.fence``), so a child
whose lease was taken over writes nothing more and stops at its next poll; what it writes to files goes under
its own claim's folders (``jobs/<id>/work/<claim>``, ``models/<id>/<claim>/…``), never the successor's; the
model row, the results file and ``succeeded`` commit together (``JobStore.succeed``). Database calls are retried
through transient outages (``storage.db.Retrying``): only a lost lease ends the work.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from finetune import hyperparams, reinforcement
from finetune.device import Device, model_footprint, native_bf16
from finetune.evals import job_end
from finetune.integrations import Tracker
from finetune.process import exit_with_parent
from finetune.recipe.callbacks import Stop
from finetune.submit import fine_tuned_model_name
from storage.blobs import make_blob_store
from storage.db import Database, Retrying
from storage.errors import TunegateError
from storage.files import Files
from storage.ids import now
from storage.jobs import JobStore
from storage.leases import LeaseLost
from storage.model_sources import local_dir
from storage.settings import Settings
from storage.tables import FineTunedModel, FineTuningJob

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class JobReporter:
    """The recipe's Reporter over the job store."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._progress_at = 0.0

    def event(self, message: str, level: str = "info") -> None:
        self.ctx.jobs.add_event(self.ctx.job.id, message, level=level, lease=self.ctx.worker)

    def metrics(self, step: int, total_steps: int, data: dict[str, float]) -> None:
        parts = [f"training loss={data['train_loss']:.4f}"] if "train_loss" in data else []
        if "valid_loss" in data:
            parts.append(f"validation loss={data['valid_loss']:.4f}")
        for key, label in (("train_reward_mean", "train reward"), ("valid_reward_mean", "validation reward")):
            if key in data:  # reinforcement jobs
                parts.append(f"{label}={data[key]:.4f}")
        self.ctx.jobs.add_event(
            self.ctx.job.id,
            f"Step {step}/{total_steps}: {', '.join(parts)}",
            type="metrics",
            data={"step": step, "total_steps": total_steps, **data},
            step=step,
            lease=self.ctx.worker,
        )
        if self.ctx.tracker is not None:  # TensorBoard, W&B (finetune/integrations.py)
            self.ctx.tracker.metrics(step, data)
        fault_point(self.ctx, "training")

    def checkpoint(self, step: int, directory: Path, metrics: dict[str, float]) -> None:
        ctx = self.ctx
        model_id = f"{ctx.model_name}:ckpt-step-{step}"
        key = f"{ctx.artifacts}/ckpt-step-{step}"  # this claim's own: a resumed job saving the step again writes anew
        ctx.blobs.delete_prefix(key)
        ctx.blobs.commit_dir(directory, key, ADAPTER_FILES)
        fault_point(ctx, "checkpoint")
        for pruned in ctx.jobs.add_checkpoint(ctx.job, step, metrics, model_id, ctx.base_id, key, lease=ctx.worker):
            if pruned.adapter_key:
                ctx.blobs.delete_prefix(pruned.adapter_key)
        self.event(f"Checkpoint created at step {step}")

    def progress(self, trained_tokens: int, estimated_finish: int | None) -> None:
        if time.monotonic() - self._progress_at < 2.0:
            return
        self._progress_at = time.monotonic()
        self.ctx.jobs.advance(self.ctx.job.id, self.ctx.worker, ("running",), estimated_finish=estimated_finish)

    def stop_requested(self) -> Stop:
        job = self.ctx.jobs.get(None, self.ctx.job.id)
        if job.lease_owner != self.ctx.worker or job.status in ("cancelled", "failed", "succeeded"):
            return "cancel"
        return "pause" if job.status in ("paused", "queued") else None


class Context:
    """``worker`` is the claim's lease token (``storage.leases.claim_token``): it fences every write."""

    def __init__(self, job_id: str, worker: str, settings: Settings) -> None:
        self.settings, self.worker = settings, worker
        self.db = Database(settings.resolved_database_url)
        self.blobs = make_blob_store(settings)
        self.files = Retrying(Files(self.db, self.blobs))
        self.jobs = Retrying(JobStore(self.db))
        self.job: FineTuningJob = self.jobs.get(None, job_id)
        self.model_name = fine_tuned_model_name(self.job)
        self.base_id = settings.base_model_id(self.job.model) or self.job.model  # the job may name a base's alias
        self.tracker: Tracker | None = None
        claim = worker.rsplit("/", 1)[-1]
        self.work_dir = self.blobs.work_dir(f"jobs/{job_id}/work/{claim}")
        self.artifacts = f"models/{job_id}/{claim}"  # adapters this claim writes (immutable, never shared)


def fault_point(ctx: Context, phase: str) -> None:
    """Fault injection for the exactly-once tests (``worker.fault_phase`` / ``fault_job``): on reaching ``phase`` the
    child kills its worker with SIGKILL and dies with it, as if the worker machine had gone down at that moment."""
    fault = ctx.settings.worker
    if fault.fault_job not in (None, ctx.job.id):
        return
    if fault.fault_phase == "segfault" and phase == "training":
        os.kill(os.getpid(), signal.SIGSEGV)
    if fault.fault_phase == phase:
        os.kill(os.getppid(), signal.SIGKILL)
        os._exit(75)


def resume_point(job_work: Path, recorded: int) -> tuple[Path | None, int]:
    """The newest complete trainer checkpoint any earlier claim of the job left (``jobs/<id>/work/<claim>``, or
    the folder itself as jobs before claim folders kept it), at step ``recorded`` or before: the last step whose
    metrics the database holds. Checkpoint files are not fenced — a claim that lost its lease can still save one
    (its stop saw the job requeued) after its last metrics write was refused — so a checkpoint past what was
    recorded would resume after steps nobody recorded."""
    from finetune.recipe.run import last_checkpoint

    candidates = [job_work, *(p for p in job_work.iterdir() if p.is_dir())] if job_work.is_dir() else []
    return max((last_checkpoint(p, recorded) for p in candidates), key=lambda found: found[1], default=(None, 0))


def parent_adapter(ctx: Context) -> Path | None:
    """A job whose ``model`` is a fine-tuned model or checkpoint (``ft:…``) continues training its adapter on its
    base: the organization must still own it or hold a grant for it now (it may have been revoked or deleted
    since the job was created). ``ctx.base_id`` becomes that model's base."""
    from storage.permissions import visible_model

    if ctx.settings.base_model_id(ctx.job.model) is not None or not ctx.job.model.startswith("ft:"):
        return None
    with ctx.db.session() as s:
        row = visible_model(s, ctx.job.organization_id, ctx.job.model)
    if row is None or not row.adapter_key:
        raise TunegateError(
            f"The model '{ctx.job.model}' is no longer available to this organization (deleted, or "
            "its permission revoked).",
            param="model",
            code="model_not_available",
        )
    ctx.base_id = row.base_model
    ctx.jobs.add_event(
        ctx.job.id, f"Continuing the training of {ctx.job.model} (base model {row.base_model})", lease=ctx.worker
    )
    return ctx.blobs.local_path(row.adapter_key)


def run(ctx: Context) -> None:
    import torch

    from finetune.recipe.run import TrainSpec, train

    job, jobs = ctx.job, ctx.jobs
    parent = parent_adapter(ctx)
    device: Device = "cuda" if ctx.settings.worker.device != "cpu" and torch.cuda.is_available() else "cpu"
    method = hyperparams.method_of(job.method)
    training = ctx.files.get(job.organization_id, job.training_file)
    spec_model = ctx.settings.base_models[ctx.base_id]
    base_path = local_dir(ctx.base_id, spec_model, ctx.settings)
    hp = hyperparams.resolve(
        hyperparams.Hyperparameters.model_validate(job.hyperparameters),
        n_examples=training.n_examples or 0,
        method=method,
        device=device,
        bf16_ok=native_bf16(device),
        footprint=model_footprint(device, base_path),
        reasoning=spec_model.reasoning,
    )
    jobs.advance(job.id, ctx.worker, ("running",), resolved=hp.model_dump(mode="json"))
    resume_from, resumed_step = resume_point(ctx.work_dir.parent, jobs.last_metrics_step(job.id))
    jobs.forget_steps_after(job.id, resumed_step, lease=ctx.worker)
    if resume_from:
        jobs.add_event(job.id, f"Resuming from the checkpoint at step {resumed_step}", lease=ctx.worker)
    validation = ctx.files.get(job.organization_id, job.validation_file) if job.validation_file else None
    spec = TrainSpec(
        method=method,
        base_path=base_path,
        chat_template=spec_model.chat_template,
        hp=hp,
        seed=job.seed,
        train_file=ctx.blobs.local_path(training.normalized_blob_key),
        valid_file=ctx.blobs.local_path(validation.normalized_blob_key) if validation else None,
        work_dir=ctx.work_dir,
        device=device,
        resume_from=resume_from,
        log_every=ctx.settings.worker.log_every_steps,
        cpu_threads=ctx.settings.worker.cpu_threads,
        grader=(job.method_config or {}).get("grader"),
        response_format=(job.method_config or {}).get("response_format"),
        owner=job.organization_id,
        reasoning=spec_model.reasoning,
        judge=reinforcement.judge(ctx.settings, ctx.db, job.organization_id, job.id),
        init_adapter=parent,
        rollouts=_rollouts(ctx) if job.method == "reinforcement" else None,
    )
    ctx.tracker = Tracker(
        ctx.work_dir.parent.parent / "tracking",
        job.id,
        job.model,
        job.integrations,  # jobs/<id>/
        warn=lambda message: jobs.add_event(job.id, message, level="warn", lease=ctx.worker),
        config={"model": job.model, "method": job.method, **hp.model_dump(mode="json")},
        org_id=job.organization_id,
        wandb_entity=ctx.settings.integrations.wandb_entity,
    )
    try:
        outcome = train(spec, JobReporter(ctx))
    finally:
        ctx.tracker.close()
    if outcome.stopped == "pause":
        jobs.add_event(job.id, f"Paused at step {outcome.global_step}; a checkpoint was saved to resume from")
        return
    if outcome.stopped == "cancel":
        return
    assert outcome.adapter_dir is not None  # a run that was not stopped saved its adapter
    _finish(ctx, outcome.adapter_dir, outcome.trained_tokens)


def _rollouts(ctx: Context) -> object:
    """Reinforcement: the engine that samples the rollouts (None: HF generate), announced in the job's events."""

    def event(message: str, level: str) -> None:
        ctx.jobs.add_event(ctx.job.id, message, level=level, lease=ctx.worker)

    folder = ctx.work_dir / "rollout-policy"
    return reinforcement.rollouts(ctx.settings, ctx.db, ctx.blobs, ctx.base_id, ctx.job.id, folder, event)


def _finish(ctx: Context, adapter_dir: Path, trained_tokens: int) -> None:
    """Store the adapter, score it, then commit model + results + ``succeeded`` at once (idempotent, fenced)."""
    job = ctx.job
    key = f"{ctx.artifacts}/final"
    ctx.blobs.delete_prefix(key)
    ctx.blobs.commit_dir(adapter_dir, key)
    fault_point(ctx, "evaluating")
    job_end.evaluate(ctx, key)
    results = job_end.results_file(ctx)
    tracking = job_end.tracking_files(ctx)  # tensorboard.tar.gz, wandb-offline-run.tar.gz
    fault_point(ctx, "results")
    fault_point(ctx, "registering")
    model = FineTunedModel(
        id=ctx.model_name,
        organization_id=job.organization_id,
        base_model=ctx.base_id,
        kind="fine-tuned",
        job_id=job.id,
        adapter_key=key,
        created_at=now(),
    )
    ctx.jobs.succeed(
        job.id,
        ctx.worker,
        model,
        results,
        trained_tokens=trained_tokens,
        finished_at=now(),
        estimated_finish=None,
        more_results=tracking,
    )
    fault_point(ctx, "succeeded")


def _error_of(exc: BaseException) -> tuple[str, str, str | None]:
    if isinstance(exc, TunegateError):
        return exc.code or "invalid_request", exc.message, exc.param
    name = type(exc).__name__
    if "OutOfMemory" in name or "out of memory" in str(exc).lower():
        return "out_of_memory", f"Training ran out of memory: {exc}. Lower batch_size or cutoff_len.", None
    return "training_failed", f"Training failed: {name}: {exc}", None


def main(argv: list[str]) -> int:
    job_id, worker, settings_path = argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    exit_with_parent()
    ctx = Context(job_id, worker, Settings.model_validate_json(Path(settings_path).read_text()))
    try:
        run(ctx)
    except LeaseLost as exc:  # another claim owns the job now: it carries on; this one writes nothing more
        print(f"stopping: {exc}", file=sys.stderr)
    except BaseException as exc:  # noqa: BLE001 - every failure ends the job readably
        traceback.print_exc()
        code, message, param = _error_of(exc)
        ctx.jobs.fail(job_id, worker, code, message, param)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
