"""Deep checks of a job's files, run by the worker while the job is ``validating_files``.

Upload already parsed every example (and refused unusable files), so what is left is what depends on the
job: the files still exist, the format matches the method, and there are enough examples.
"""

from __future__ import annotations

from storage.errors import InvalidRequest, NotFound
from storage.files import Files
from storage.tables import FineTuningJob, StoredFile

MIN_EXAMPLES = 10
KIND_OF_METHOD = {"supervised": "supervised", "dpo": "preference", "reinforcement": "reinforcement"}


def validate(job: FineTuningJob, files: Files) -> None:
    training = _file(files, job, job.training_file, "training_file")
    _check(job, training, "training_file", "Training")
    if (training.n_examples or 0) < MIN_EXAMPLES:
        raise InvalidRequest(
            f"Training file has {training.n_examples or 0} example(s), but must have at least {MIN_EXAMPLES} examples",
            param="training_file",
            code="invalid_n_examples",
        )
    if job.validation_file:
        _check(job, _file(files, job, job.validation_file, "validation_file"), "validation_file", "Validation")


def _file(files: Files, job: FineTuningJob, file_id: str, param: str) -> StoredFile:
    try:
        return files.get(job.organization_id, file_id)
    except NotFound:
        raise InvalidRequest(
            f"File {file_id} was deleted before the job could read it.", param=param, code=f"invalid_{param}"
        ) from None


def _check(job: FineTuningJob, row: StoredFile, param: str, label: str) -> None:
    if row.status != "processed" or not row.normalized_blob_key:
        raise InvalidRequest(
            f"{label} file {row.id} is not a usable fine-tune file ({row.status_details or row.status}).",
            param=param,
            code=f"invalid_{param}",
        )
    wanted = KIND_OF_METHOD[job.method]
    if row.data_kind != wanted:
        raise InvalidRequest(
            f"{label} file {row.id} holds {row.data_kind} examples ({row.data_format}), but a {job.method} job needs "
            f"{wanted} examples.",
            param=param,
            code=f"invalid_{param}",
        )
