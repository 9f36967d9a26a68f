"""The end of a fine-tuning job, apart from training: generation metrics on the validation file and the results CSV.

``evaluate`` generates the fine-tuned model's and its base's answers to the validation examples through a ready
serving engine and scores them as LLaMA-Factory does (ROUGE/BLEU, ``finetune.evals.metrics``); ``results_file``
writes the per-step metrics as OpenAI's results CSV. Both run in the job's child, fenced by its lease.
"""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING

from finetune.evals import metrics
from finetune.evals.engine_adapters import EngineAdapters
from finetune.evals.generation import NoEngine, UsageSink, generate, samples_from
from serving.placement import engine_for
from storage.engines import EngineRegistry, engine_adapter_path, engine_url
from storage.files import NewFile
from storage.tables import StoredFile

if TYPE_CHECKING:
    from finetune.child import Context as JobContext

EVAL_SAMPLES = 200  # validation examples scored by generation at the end of a job
CSV_HEADER = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")
RFT_CSV_HEADER = ("step", "train_loss", "train_reward_mean", "valid_reward_mean", "train_completion_tokens_mean")


def evaluate(ctx: JobContext, adapter_key: str) -> None:
    """ROUGE/BLEU of the fine-tuned model and of its base on the validation file, generated through a serving
    engine; merged into the final metrics event and the newest checkpoint's metrics. Never fails the job."""

    job = ctx.job
    if not job.validation_file or job.method != "supervised":
        return
    validation = ctx.files.get(job.organization_id, job.validation_file)
    samples = samples_from(ctx.blobs.local_path(validation.normalized_blob_key), EVAL_SAMPLES)
    if not samples:
        return
    urls = EngineRegistry(ctx.db).ready(ctx.base_id)  # engines serve a base under its id (job.model may be an alias)
    try:
        if not urls:
            raise NoEngine(f"no serving engine for {job.model} is running")
        # kept loaded afterwards: the model is served next (finetune.evals.engine_adapters, step 3)
        with EngineAdapters(ctx.settings.serving.max_adapters_per_engine, keep=True) as adapters:
            home = engine_for(adapter_key, urls, engine_url)  # where the gateways will send the new model
            adapters.ensure(home, adapter_key, engine_adapter_path(ctx.settings, adapter_key, ctx.blobs))
        references = [sample.reference for sample in samples]
        usage = {
            model: UsageSink(ctx.db, job.organization_id, model, "fine_tuning.jobs", job.id)
            for model in (ctx.model_name, job.model)
        }  # accounted to the organization that trained
        tuned = metrics.score(generate(urls, adapter_key, samples, usage=usage[ctx.model_name]), references)
        base = metrics.score(generate(urls, ctx.base_id, samples, usage=usage[job.model]), references)
    except Exception as exc:  # scores are a bonus: the trained model stands without them
        ctx.jobs.add_event(job.id, f"Generation metrics skipped: {exc}", level="warn", lease=ctx.worker)
        return
    values = {**tuned, **{f"base_{k}": v for k, v in base.items()}}
    summary = ", ".join(f"{k}={tuned[k]:.4f} (base {base[k]:.4f})" for k in tuned if not k.endswith("_with_think"))
    ctx.jobs.add_final_metrics(job.id, values, summary, lease=ctx.worker)
    ctx.jobs.add_event(
        job.id, f"Evaluated on {len(samples)} validation examples: {summary}", data=values, lease=ctx.worker
    )


def results_file(ctx: JobContext) -> StoredFile:
    """The results CSV's blobs and row; the row is inserted with the job's end (``JobStore.succeed``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    rft = ctx.job.method == "reinforcement"
    writer.writerow(RFT_CSV_HEADER if rft else CSV_HEADER)
    for event in ctx.jobs.metrics(ctx.job.id):
        d = event.data or {}
        if rft:  # the metrics event's keys, named as the header
            writer.writerow([d.get(k, "") for k in RFT_CSV_HEADER])
            continue
        writer.writerow(
            [
                d.get("step"),
                d.get("train_loss", ""),
                d.get("train_mean_token_accuracy", ""),
                d.get("valid_loss", ""),
                d.get("valid_mean_token_accuracy", ""),
            ]
        )
    with ctx.blobs.stage() as staged:
        staged.write(out.getvalue().encode())
        row = ctx.files.store_blobs(
            NewFile(
                organization_id=ctx.job.organization_id,
                filename="step_metrics.csv",
                purpose="fine-tune-results",
                original=staged,
            )
        )
    return row


def tracking_files(ctx: JobContext) -> list[StoredFile]:
    """The TensorBoard events and a W&B offline run (``finetune.integrations``) as results files: blobs stored,
    rows inserted with the job's end like the CSV's."""
    if ctx.tracker is None:
        return []
    rows = []
    for name, path in ctx.tracker.archives(ctx.work_dir / "results"):
        with ctx.blobs.stage() as staged, open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                staged.write(chunk)
            rows.append(
                ctx.files.store_blobs(
                    NewFile(
                        organization_id=ctx.job.organization_id,
                        filename=name,
                        purpose="fine-tune-results",
                        original=staged,
                    )
                )
            )
    return rows
