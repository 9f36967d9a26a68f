"""An export's child process: ``python -m finetune.export.child <export id> <worker id> <settings.json>``.

merge (fine-tuned models) → convert / quantize with llama.cpp's tools → Modelfile + README → output files. The
work happens in a scratch directory inside the blob store's staging area (same filesystem), so finished outputs
become files by a rename, without copying gigabytes. Any exception fails the export with a readable error.
"""

from __future__ import annotations

import logging
import shutil
import sys
import traceback
from pathlib import Path

from finetune.export import pipeline
from storage.blobs import make_blob_store
from storage.db import Database
from storage.errors import NotFound, TunegateError
from storage.exports import ExportStore
from storage.files import Files, NewFile
from storage.jobs import JobStore, owned_model
from storage.model_sources import local_dir
from storage.settings import Settings
from storage.tables import Export, FineTuningJob, StoredFile

log = logging.getLogger("tunegate.exports")


class Cancelled(Exception):
    pass


class Context:
    def __init__(self, export_id: str, worker: str, settings: Settings) -> None:
        self.settings, self.worker = settings, worker
        self.db = Database(settings.resolved_database_url)
        self.blobs = make_blob_store(settings)
        self.files = Files(self.db, self.blobs)
        self.exports = ExportStore(self.db)
        self.export: Export = self.exports.get(None, export_id)
        self.work = self.blobs.scratch / f"{export_id}.{worker.rsplit('/', 1)[-1]}.work"  # this claim's own

    def step(self, progress: float, stage: str) -> None:
        log.info("%s: %.0f%% %s", self.export.id, progress * 100, stage)
        if not self.exports.progress(self.export.id, self.worker, progress, stage):
            raise Cancelled(stage)


def run(ctx: Context) -> list[StoredFile]:
    export, settings = ctx.export, ctx.settings
    with ctx.db.session() as s:
        tuned = owned_model(s, export.organization_id, export.model)
    if tuned is None and settings.base_model_id(export.model) is None:
        raise TunegateError(
            f"The model '{export.model}' was deleted after this export was created.",
            param="model",
            code="model_not_found",
        )
    base_id = tuned.base_model if tuned else settings.base_model_id(export.model) or export.model
    spec = settings.base_models.get(base_id)
    if spec is None:
        raise TunegateError(
            f"The base model '{base_id}' is no longer configured on this server.", param="model", code="model_not_found"
        )
    job = JobStore(ctx.db).get(None, tuned.job_id) if tuned and tuned.job_id else None
    shutil.rmtree(ctx.work, ignore_errors=True)
    ctx.step(0.02, f"preparing {base_id}")
    request = pipeline.Request(
        model=export.model,
        format=export.format,
        quant=export.quant,
        base_id=base_id,
        base_dir=Path(local_dir(base_id, spec, settings)),
        adapter_dir=ctx.blobs.local_path(tuned.adapter_key) if tuned and tuned.adapter_key else None,
        chat_template=spec.chat_template,
        system=export.system or _trained_system(ctx, job),
        num_ctx=_cutoff_len(job),
        threads=settings.worker.cpu_threads or 0,
    )
    made = pipeline.run(request, ctx.work, ctx.step)
    for warning in made.warnings:
        ctx.exports.warn(export.id, ctx.worker, warning)
    ctx.step(0.95, "storing the files")
    return _store(ctx, made.files)


def _trained_system(ctx: Context, job: FineTuningJob | None) -> str | None:
    """The system prompt every training example started with, when they all share one: the Modelfile's default
    SYSTEM, so Ollama prompts the model the way it was trained."""
    import json

    if job is None:
        return None
    try:
        training = ctx.files.get(job.organization_id, job.training_file)
    except NotFound:  # deleted since: no default then
        return None
    if not training.normalized_blob_key:
        return None
    common: str | None = None
    with open(ctx.blobs.local_path(training.normalized_blob_key), encoding="utf-8") as fh:
        for line in fh:
            messages = json.loads(line).get("messages") or [{}]
            first = messages[0]
            system = first.get("content") if first.get("role") == "system" else None
            if not isinstance(system, str) or (common is not None and system != common):
                return None
            common = system
    return common if common and '"""' not in common else None


def _cutoff_len(job: FineTuningJob | None) -> int:
    """``num_ctx`` = the training cutoff (what the model learned to attend over); 4096 for base models."""
    resolved = (job.resolved or job.hyperparameters or {}) if job else {}
    return int(resolved["cutoff_len"]) if resolved.get("cutoff_len") else 4096


def _store(ctx: Context, paths: list[Path]) -> list[StoredFile]:
    """The outputs' blobs stored and their rows built; the rows commit with the export's end (``finish``)."""
    rows: list[StoredFile] = []
    try:
        for path in paths:
            rows.append(
                ctx.files.store_blobs(
                    NewFile(
                        organization_id=ctx.export.organization_id,
                        filename=path.name,
                        purpose="fine-tune-results",
                        original=ctx.blobs.adopt(path),
                    )
                )
            )
    except BaseException:
        _drop(ctx, rows)
        raise
    return rows


def _drop(ctx: Context, rows: list[StoredFile]) -> None:
    """Blobs of outputs that will never be listed (the export failed, was cancelled or taken over)."""
    for row in rows:
        ctx.blobs.delete_prefix(f"files/{row.id}")


def _error_of(exc: BaseException) -> dict:
    if isinstance(exc, TunegateError):
        return {"code": exc.code or "export_failed", "message": exc.message, "param": exc.param}
    return {"code": "export_failed", "message": f"Export failed: {type(exc).__name__}: {exc}", "param": None}


def main(argv: list[str]) -> int:
    from finetune.process import exit_with_parent

    export_id, worker, settings_path = argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    exit_with_parent()
    ctx = Context(export_id, worker, Settings.model_validate_json(Path(settings_path).read_text()))
    try:
        outputs = run(ctx)
        listed = [{"id": row.id, "filename": row.filename, "bytes": row.bytes} for row in outputs]
        if not ctx.exports.finish(
            export_id, worker, files=outputs, status="succeeded", progress=1.0, stage="done", output_files=listed
        ):
            _drop(ctx, outputs)  # cancelled or taken over at the last moment: nobody will list these files
    except Cancelled:
        log.info("%s was cancelled or taken over", export_id)
    except BaseException as exc:  # noqa: BLE001 - every failure ends the export readably
        traceback.print_exc()
        ctx.exports.finish(export_id, worker, status="failed", stage="failed", error=_error_of(exc))
    finally:
        shutil.rmtree(ctx.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
