"""A job's child process: ``python -m finetune.child <job id> <worker id> <settings.json>``.

It resolves the job's settings for the real device, runs the recipe (resuming from the last trainer
checkpoint when there is one), and records everything through the job store: events, checkpoints as
servable models, the final model, the results CSV. Any exception fails the job with a readable error.
It exits by itself when its worker disappears (the lease then moves the job to another worker).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import sys
import threading
import time
import traceback
from pathlib import Path

from finetune import hyperparams
from finetune.device import model_footprint, native_bf16
from finetune.recipe.callbacks import Stop
from finetune.submit import fine_tuned_model_name
from storage.blobs import LocalBlobStore
from storage.db import Database
from storage.engines import EngineRegistry, engine_adapter_path
from storage.errors import TunegateError
from storage.files import Files, NewFile
from storage.ids import now
from storage.jobs import JobStore
from storage.model_sources import local_dir
from storage.settings import Settings
from storage.tables import FineTunedModel, FineTuningJob

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
CSV_HEADER = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")


class JobReporter:
    """The recipe's Reporter over the job store."""

    def __init__(self, ctx: "Context") -> None:
        self.ctx = ctx
        self._progress_at = 0.0

    def event(self, message: str, level: str = "info") -> None:
        self.ctx.jobs.add_event(self.ctx.job.id, message, level=level)

    def metrics(self, step: int, total_steps: int, data: dict[str, float]) -> None:
        parts = [f"training loss={data['train_loss']:.4f}"] if "train_loss" in data else []
        if "valid_loss" in data:
            parts.append(f"validation loss={data['valid_loss']:.4f}")
        self.ctx.jobs.add_event(self.ctx.job.id, f"Step {step}/{total_steps}: {', '.join(parts)}", type="metrics",
                                data={"step": step, "total_steps": total_steps, **data}, step=step)

    def checkpoint(self, step: int, directory: Path, metrics: dict[str, float]) -> None:
        ctx = self.ctx
        model_id = f"{ctx.model_name}:ckpt-step-{step}"
        key = f"models/{ctx.job.id}/ckpt-step-{step}"
        ctx.blobs.delete_prefix(key)  # a resumed job may save the same step again
        ctx.blobs.commit_dir(directory, key, ADAPTER_FILES)
        for pruned in ctx.jobs.add_checkpoint(ctx.job, step, metrics, model_id, ctx.job.model, key):
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
    def __init__(self, job_id: str, worker: str, settings: Settings) -> None:
        self.settings, self.worker = settings, worker
        self.db = Database(settings.resolved_database_url)
        self.blobs = LocalBlobStore(settings.resolved_blob_dir)
        self.files = Files(self.db, self.blobs)
        self.jobs = JobStore(self.db)
        self.job: FineTuningJob = self.jobs.get(None, job_id)
        self.model_name = fine_tuned_model_name(self.job)


def run(ctx: Context) -> None:
    import torch

    from finetune.recipe.run import TrainSpec, last_checkpoint, train

    job, jobs = ctx.job, ctx.jobs
    device = "cuda" if ctx.settings.worker.device != "cpu" and torch.cuda.is_available() else "cpu"
    training = ctx.files.get(job.organization_id, job.training_file)
    spec_model = ctx.settings.base_models[job.model]
    base_path = local_dir(job.model, spec_model, ctx.settings)
    hp = hyperparams.resolve(hyperparams.Hyperparameters.model_validate(job.hyperparameters),
                             n_examples=training.n_examples or 0, method=job.method, device=device,
                             bf16_ok=native_bf16(device), footprint=model_footprint(device, base_path))
    jobs.advance(job.id, ctx.worker, ("running",), resolved=hp.model_dump(mode="json"))
    work_dir = ctx.blobs.local_path(f"jobs/{job.id}/work")
    resume_from, resumed_step = last_checkpoint(work_dir)
    jobs.forget_steps_after(job.id, resumed_step)
    if resume_from:
        jobs.add_event(job.id, f"Resuming from the checkpoint at step {resumed_step}")
    validation = ctx.files.get(job.organization_id, job.validation_file) if job.validation_file else None
    spec = TrainSpec(
        method=job.method, base_path=base_path,
        chat_template=spec_model.chat_template, hp=hp, seed=job.seed,
        train_file=ctx.blobs.local_path(training.normalized_blob_key),
        valid_file=ctx.blobs.local_path(validation.normalized_blob_key) if validation else None,
        work_dir=work_dir, device=device, resume_from=resume_from, log_every=ctx.settings.worker.log_every_steps,
        cpu_threads=ctx.settings.worker.cpu_threads,
    )
    outcome = train(spec, JobReporter(ctx))
    if outcome.stopped == "pause":
        jobs.add_event(job.id, f"Paused at step {outcome.global_step}; a checkpoint was saved to resume from")
        return
    if outcome.stopped == "cancel":
        return
    _finish(ctx, outcome.adapter_dir, outcome.trained_tokens)


EVAL_SAMPLES = 200  # validation examples scored by generation at the end of a job


def _finish(ctx: Context, adapter_dir: Path, trained_tokens: int) -> None:
    job = ctx.job
    key = f"models/{job.id}/final"
    ctx.blobs.delete_prefix(key)
    ctx.blobs.commit_dir(adapter_dir, key)
    ctx.jobs.add_model(FineTunedModel(id=ctx.model_name, organization_id=job.organization_id, base_model=job.model,
                                      kind="fine-tuned", job_id=job.id, adapter_key=key, created_at=now()))
    _evaluate(ctx, key)
    results = _results_file(ctx)
    ctx.jobs.add_event(job.id, f"New fine-tuned model created: {ctx.model_name}")
    if ctx.jobs.advance(job.id, ctx.worker, ("running",), status="succeeded", fine_tuned_model=ctx.model_name,
                        result_files=[results], trained_tokens=trained_tokens, finished_at=now(),
                        estimated_finish=None):
        ctx.jobs.add_event(job.id, "The job has successfully completed")


def _evaluate(ctx: Context, adapter_key: str) -> None:
    """ROUGE/BLEU of the fine-tuned model and of its base on the validation file, generated through a serving
    engine; merged into the final metrics event and the newest checkpoint's metrics. Never fails the job."""
    from finetune.evals import metrics
    from finetune.evals.generation import NoEngine, generate, load_adapter, samples_from

    job = ctx.job
    if not job.validation_file or job.method != "supervised":
        return
    validation = ctx.files.get(job.organization_id, job.validation_file)
    samples = samples_from(ctx.blobs.local_path(validation.normalized_blob_key), EVAL_SAMPLES)
    if not samples:
        return
    urls = EngineRegistry(ctx.db).ready(job.model)
    try:
        if not urls:
            raise NoEngine(f"no serving engine for {job.model} is running")
        load_adapter(urls[0], adapter_key, engine_adapter_path(ctx.settings, adapter_key, ctx.blobs.local_path(adapter_key)))
        references = [sample.reference for sample in samples]
        tuned = metrics.score(generate(urls, adapter_key, samples), references)
        base = metrics.score(generate(urls, job.model, samples), references)
    except Exception as exc:  # scores are a bonus: the trained model stands without them
        ctx.jobs.add_event(job.id, f"Generation metrics skipped: {exc}", level="warn")
        return
    values = {**tuned, **{f"base_{k}": v for k, v in base.items()}}
    summary = ", ".join(f"{k}={tuned[k]:.4f} (base {base[k]:.4f})" for k in tuned if not k.endswith("_with_think"))
    ctx.jobs.add_final_metrics(job.id, values, summary)
    ctx.jobs.add_event(job.id, f"Evaluated on {len(samples)} validation examples: {summary}", data=values)


def _results_file(ctx: Context) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for event in ctx.jobs.metrics(ctx.job.id):
        d = event.data or {}
        writer.writerow([d.get("step"), d.get("train_loss", ""), d.get("train_mean_token_accuracy", ""),
                         d.get("valid_loss", ""), d.get("valid_mean_token_accuracy", "")])
    with ctx.blobs.stage() as staged:
        staged.write(out.getvalue().encode())
        row = ctx.files.create(NewFile(organization_id=ctx.job.organization_id, filename="step_metrics.csv",
                                       purpose="fine-tune-results", original=staged))
    return row.id


def _exit_with_parent() -> None:
    """If the worker dies (even kill -9), stop too: the job's lease will hand it to another worker."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(75)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


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
    _exit_with_parent()
    ctx = Context(job_id, worker, Settings.model_validate_json(Path(settings_path).read_text()))
    try:
        run(ctx)
    except BaseException as exc:  # noqa: BLE001 - every failure ends the job readably
        traceback.print_exc()
        code, message, param = _error_of(exc)
        ctx.jobs.fail(job_id, worker, code, message, param)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
