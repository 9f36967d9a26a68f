"""Fine-tuning wire shapes: ``fine_tuning.job``, ``fine_tuning.job.event``, ``fine_tuning.job.checkpoint``."""

from __future__ import annotations

from typing import Any

from storage.tables import FineTuningJob, JobCheckpoint, JobEvent

OPENAI_HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier")


def job_object(job: FineTuningJob) -> dict[str, Any]:
    """Every field the spec requires, nulls included; ``auto`` replaced by resolved values once known."""
    shown = {**job.hyperparameters, **(job.resolved or {})}
    method_hp = {k: v for k, v in shown.items() if v is not None}  # beta, RFT knobs: None unless that method
    return {
        "object": "fine_tuning.job",
        "id": job.id,
        "created_at": job.created_at,
        "error": job.error,
        "fine_tuned_model": job.fine_tuned_model,
        "finished_at": job.finished_at,
        "hyperparameters": {k: shown[k] for k in OPENAI_HYPERPARAMETERS},
        "model": job.model,
        "organization_id": job.organization_id,
        "result_files": list(job.result_files or []),
        "status": job.status,
        "trained_tokens": job.trained_tokens,
        "training_file": job.training_file,
        "validation_file": job.validation_file,
        "seed": job.seed,
        "estimated_finish": job.estimated_finish,
        "integrations": list(job.integrations or []),
        "metadata": job.metadata_,
        "method": {"type": job.method, job.method: {**(job.method_config or {}), "hyperparameters": method_hp}},
        "suffix": job.suffix,
    }


def event_object(event: JobEvent) -> dict[str, Any]:
    return {
        "object": "fine_tuning.job.event",
        "id": event.id,
        "created_at": event.created_at,
        "level": event.level,
        "message": event.message,
        "type": event.type,
        "data": event.data or {},
    }


def checkpoint_object(ckpt: JobCheckpoint) -> dict[str, Any]:
    return {
        "object": "fine_tuning.job.checkpoint",
        "id": ckpt.id,
        "created_at": ckpt.created_at,
        "fine_tuned_model_checkpoint": ckpt.fine_tuned_model_checkpoint,
        "fine_tuning_job_id": ckpt.job_id,
        "step_number": ckpt.step_number,
        "metrics": ckpt.metrics,
    }
