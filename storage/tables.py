"""SQLModel tables. Every tenant row carries ``organization_id`` and every tenant query filters on it.

Public ids are random strings; ``seq`` (an autoincrement integer) gives list pagination a stable
total order (``created_at`` has one-second resolution and collides).
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, UniqueConstraint
from sqlmodel import Field, SQLModel


class Organization(SQLModel, table=True):
    __tablename__ = "organizations"

    id: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=256)
    created_at: int


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: str = Field(primary_key=True, max_length=64)
    organization_id: str = Field(foreign_key="organizations.id", index=True, max_length=64)
    name: str = Field(default="", max_length=256)
    prefix: str = Field(max_length=32, description="First characters of the secret, for display only.")
    secret_sha256: str = Field(unique=True, max_length=64)
    created_at: int
    revoked_at: int | None = None


class AdminCredential(SQLModel, table=True):
    """The generated admin credential (only used when settings carry none), stored as a hash."""

    __tablename__ = "admin_credentials"

    id: int | None = Field(default=None, primary_key=True)
    secret_sha256: str = Field(unique=True, max_length=64)
    created_at: int


class StoredFile(SQLModel, table=True):
    __tablename__ = "files"

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(unique=True, max_length=64)
    organization_id: str = Field(foreign_key="organizations.id", index=True, max_length=64)
    filename: str = Field(max_length=512)
    purpose: str = Field(index=True, max_length=64)
    bytes: int = Field(sa_type=BigInteger)  # an Upload assembles files up to 8 GiB
    created_at: int
    expires_at: int | None = Field(default=None, index=True)
    status: str = Field(default="processed", max_length=32)
    status_details: str | None = None
    blob_key: str = Field(max_length=512, description="The bytes exactly as uploaded.")
    normalized_blob_key: str | None = Field(
        default=None, max_length=512, description="Fine-tune files: the data as OpenAI chat/DPO JSONL."
    )
    data_format: str | None = Field(default=None, max_length=64, description="Detected format, e.g. alpaca.")
    data_kind: str | None = Field(default=None, max_length=32, description="supervised | preference")
    n_examples: int | None = None


class BaseModelRecord(SQLModel, table=True):
    """First sighting of each configured base model, so its ``created`` is stable across restarts."""

    __tablename__ = "base_models"

    id: str = Field(primary_key=True, max_length=256)
    created_at: int


class FineTunedModel(SQLModel, table=True):
    """A servable adapter: a job's final model or one of its checkpoints."""

    __tablename__ = "models"

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(unique=True, max_length=512)
    organization_id: str = Field(foreign_key="organizations.id", index=True, max_length=64)
    base_model: str = Field(max_length=256)
    kind: str = Field(default="fine-tuned", max_length=32, description="fine-tuned | checkpoint")
    parent_id: str | None = Field(default=None, max_length=512, description="For checkpoints: the final model id.")
    job_id: str | None = Field(default=None, index=True, max_length=64)
    adapter_key: str | None = Field(default=None, max_length=512, description="Blob key of the PEFT adapter dir.")
    created_at: int


class FineTuningJob(SQLModel, table=True):
    """A fine-tuning job: request, resolved settings, state machine, lease for crash recovery.

    ``status``: validating_files → queued → running → succeeded | failed | cancelled, and paused.
    A worker owns a job while ``lease_owner`` is set and ``lease_expires_at`` is in the future; every
    state change is a conditional UPDATE, so a worker that lost its lease cannot overwrite anything.
    """

    __tablename__ = "fine_tuning_jobs"

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(unique=True, max_length=64)
    organization_id: str = Field(foreign_key="organizations.id", index=True, max_length=64)
    model: str = Field(max_length=256)
    training_file: str = Field(max_length=64)
    validation_file: str | None = Field(default=None, max_length=64)
    method: str = Field(default="supervised", max_length=32, description="supervised | dpo | reinforcement")
    method_config: dict | None = Field(
        default=None, sa_type=JSON, description="reinforcement: grader and response_format, as checked."
    )
    hyperparameters: dict = Field(default_factory=dict, sa_type=JSON, description="As requested (validated).")
    resolved: dict | None = Field(default=None, sa_type=JSON, description="Concrete values, once resolved.")
    suffix: str | None = Field(default=None, max_length=64)
    seed: int
    metadata_: dict | None = Field(default=None, sa_type=JSON, sa_column_kwargs={"name": "metadata"})
    status: str = Field(default="validating_files", index=True, max_length=32)
    error: dict | None = Field(default=None, sa_type=JSON)
    fine_tuned_model: str | None = Field(default=None, max_length=512)
    result_files: list = Field(default_factory=list, sa_type=JSON)
    trained_tokens: int | None = None
    estimated_finish: int | None = None
    created_at: int
    finished_at: int | None = None
    lease_owner: str | None = Field(default=None, max_length=128)
    lease_expires_at: float | None = Field(default=None, index=True)
    attempts: int = 0
    integrations: list | None = Field(default=None, sa_type=JSON, description="As requested (validated): wandb.")


class JobEvent(SQLModel, table=True):
    __tablename__ = "fine_tuning_job_events"

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(unique=True, max_length=64)
    job_id: str = Field(index=True, max_length=64)
    created_at: int
    level: str = Field(default="info", max_length=16)
    message: str
    type: str = Field(default="message", max_length=16)
    data: dict | None = Field(default=None, sa_type=JSON)
    step: int | None = Field(default=None, description="Metrics events: the global step they describe.")


class JobCheckpoint(SQLModel, table=True):
    __tablename__ = "fine_tuning_job_checkpoints"

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(unique=True, max_length=64)
    job_id: str = Field(index=True, max_length=64)
    organization_id: str = Field(max_length=64)
    step_number: int
    metrics: dict = Field(default_factory=dict, sa_type=JSON)
    fine_tuned_model_checkpoint: str = Field(max_length=512)
    created_at: int


class UsageRecord(SQLModel, table=True):
    """Tokens of one completion request, per organization and API key (written in batches by the gateway)."""

    __tablename__ = "usage_records"

    seq: int | None = Field(default=None, primary_key=True)
    organization_id: str = Field(index=True, max_length=64)
    api_key_id: str = Field(index=True, max_length=64)
    model: str = Field(max_length=512)
    endpoint: str = Field(max_length=32, description="chat.completions | completions")
    prompt_tokens: int = 0
    completion_tokens: int = 0
    request_id: str | None = Field(default=None, max_length=64)
    created_at: int = Field(index=True)


class EngineRecord(SQLModel, table=True):
    """An engine replica as its gateway last saw it, so that workers can generate through it (job-end evals)."""

    __tablename__ = "engines"

    url: str = Field(primary_key=True, max_length=512)
    base_model: str = Field(index=True, max_length=256)
    state: str = Field(max_length=16)
    updated_at: float
    api_key: str | None = Field(
        default=None, max_length=256, description="The key the engine requires (workers read it)"
    )


class Eval(SQLModel, table=True):
    """An eval: what an item looks like and how outputs are graded (``/v1/evals``)."""

    __tablename__ = "evals"

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(unique=True, max_length=64)
    organization_id: str = Field(foreign_key="organizations.id", index=True, max_length=64)
    name: str = Field(default="", max_length=256)
    data_source_config: dict = Field(default_factory=dict, sa_type=JSON)
    testing_criteria: list = Field(default_factory=list, sa_type=JSON)
    metadata_: dict | None = Field(default=None, sa_type=JSON, sa_column_kwargs={"name": "metadata"})
    created_at: int


class EvalRun(SQLModel, table=True):
    """One run of an eval over a data source for a model; executed by a worker under a lease."""

    __tablename__ = "eval_runs"

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(unique=True, max_length=64)
    eval_id: str = Field(index=True, max_length=64)
    organization_id: str = Field(index=True, max_length=64)
    name: str = Field(default="", max_length=256)
    model: str = Field(max_length=512)
    data_source: dict = Field(default_factory=dict, sa_type=JSON)
    status: str = Field(
        default="queued", index=True, max_length=32, description="queued | in_progress | completed | failed | canceled"
    )
    result_counts: dict = Field(default_factory=dict, sa_type=JSON)
    per_testing_criteria_results: list = Field(default_factory=list, sa_type=JSON)
    per_model_usage: list = Field(default_factory=list, sa_type=JSON)
    error: dict | None = Field(default=None, sa_type=JSON)
    metadata_: dict | None = Field(default=None, sa_type=JSON, sa_column_kwargs={"name": "metadata"})
    created_at: int
    lease_owner: str | None = Field(default=None, max_length=128)
    lease_expires_at: float | None = Field(default=None, index=True)


class EvalOutputItem(SQLModel, table=True):
    """One data-source item of a run: the model's sample and each grader's result."""

    __tablename__ = "eval_output_items"
    __table_args__ = (UniqueConstraint("run_id", "datasource_item_id", name="uq_eval_output_items_run_item"),)

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(unique=True, max_length=64)
    run_id: str = Field(index=True, max_length=64)
    eval_id: str = Field(max_length=64)
    datasource_item_id: int
    datasource_item: dict = Field(default_factory=dict, sa_type=JSON)
    status: str = Field(max_length=16, description="pass | fail | error")
    results: list = Field(default_factory=list, sa_type=JSON)
    sample: dict = Field(default_factory=dict, sa_type=JSON)
    created_at: int


class Export(SQLModel, table=True):
    """An export of a model to files for the edge (merged safetensors, GGUF, GGUF LoRA adapter + Modelfile).

    ``status``: queued → running → succeeded | failed | cancelled. Run by a worker in a child process under a lease;
    the outputs are ordinary files (``/v1/files/{id}/content``), listed in ``output_files``.
    """

    __tablename__ = "exports"

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(unique=True, max_length=64)
    organization_id: str = Field(foreign_key="organizations.id", index=True, max_length=64)
    model: str = Field(max_length=512)
    format: str = Field(max_length=32, description="gguf | gguf_adapter | safetensors")
    quant: str | None = Field(default=None, max_length=16)
    system: str | None = Field(default=None, description="Modelfile SYSTEM prompt")
    status: str = Field(default="queued", index=True, max_length=32)
    progress: float = 0.0
    stage: str = Field(default="", max_length=512, description="What the export is doing now")
    output_files: list = Field(default_factory=list, sa_type=JSON)
    warnings: list = Field(default_factory=list, sa_type=JSON)
    error: dict | None = Field(default=None, sa_type=JSON)
    created_at: int
    finished_at: int | None = None
    lease_owner: str | None = Field(default=None, max_length=128)
    lease_expires_at: float | None = Field(default=None, index=True)


class Batch(SQLModel, table=True):
    """A batch of requests from a ``batch`` file (``/v1/batches``), run by a worker under a lease: validating →
    in_progress → finalizing → completed, or failed | expired | cancelling → cancelled. Each line's result is a
    ``BatchLine``; the output and error files are assembled from them at the end."""

    __tablename__ = "batches"

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(unique=True, max_length=64)
    organization_id: str = Field(foreign_key="organizations.id", index=True, max_length=64)
    api_key_id: str = Field(max_length=64, description="The key that created it: its usage is counted there.")
    endpoint: str = Field(max_length=64)
    input_file_id: str = Field(max_length=64)
    completion_window: str = Field(max_length=16)
    status: str = Field(default="validating", index=True, max_length=32)
    model: str | None = Field(default=None, max_length=512, description="The first line's model.")
    metadata_: dict | None = Field(default=None, sa_type=JSON, sa_column_kwargs={"name": "metadata"})
    errors: list | None = Field(default=None, sa_type=JSON, description="Why the batch failed (BatchError objects).")
    output_file_id: str | None = Field(default=None, max_length=64)
    error_file_id: str | None = Field(default=None, max_length=64)
    output_expires_after_s: int | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    input_tokens: int = Field(default=0, sa_type=BigInteger)
    output_tokens: int = Field(default=0, sa_type=BigInteger)
    created_at: int
    expires_at: int
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    lease_owner: str | None = Field(default=None, max_length=128)
    lease_expires_at: float | None = Field(default=None, index=True)


class BatchLine(SQLModel, table=True):
    """One input line's result, stored once: (batch, line) is unique and every write is fenced by the lease."""

    __tablename__ = "batch_lines"
    __table_args__ = (UniqueConstraint("batch_id", "line", name="uq_batch_lines_batch_line"),)

    seq: int | None = Field(default=None, primary_key=True)
    batch_id: str = Field(index=True, max_length=64)
    line: int = Field(description="1-based line number in the input file.")
    ok: bool = Field(description="Goes to the output file (2xx), else to the error file.")
    result: str = Field(description="The output line's JSON, as it will be written.")


class StoredResponse(SQLModel, table=True):
    """A Responses API response (``/v1/responses``, ``store`` true): the Response object as last answered, and its
    place in a ``previous_response_id`` chain. Its own input items are ``ResponseInputItem`` rows."""

    __tablename__ = "responses"

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(unique=True, max_length=64)
    organization_id: str = Field(foreign_key="organizations.id", index=True, max_length=64)
    model: str = Field(max_length=512)
    status: str = Field(index=True, max_length=32)
    background: bool = False
    previous_response_id: str | None = Field(default=None, max_length=64)
    created_at: int
    body: dict = Field(sa_type=JSON, description="The Response object (output, usage, status...).")


class ResponseInputItem(SQLModel, table=True):
    """One input item of a stored response, in the order sent (``seq``)."""

    __tablename__ = "response_input_items"

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(max_length=64)
    response_id: str = Field(foreign_key="responses.id", index=True, max_length=64)
    item: dict = Field(sa_type=JSON)


class OrganizationLimits(SQLModel, table=True):
    """An organization's overrides of the limit defaults in settings (``LimitSettings`` fields; absent: the default)."""

    __tablename__ = "organization_limits"

    organization_id: str = Field(primary_key=True, foreign_key="organizations.id", max_length=64)
    limits: dict = Field(default_factory=dict, sa_type=JSON)
    updated_at: int


class Upload(SQLModel, table=True):
    """A file sent in parts (``/v1/uploads``): pending → completed (``file_id`` set) | cancelled | expired."""

    __tablename__ = "uploads"

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(unique=True, max_length=64)
    organization_id: str = Field(foreign_key="organizations.id", index=True, max_length=64)
    filename: str = Field(max_length=512)
    purpose: str = Field(max_length=64)
    mime_type: str = Field(max_length=255)
    bytes: int = Field(sa_type=BigInteger, description="Declared at creation; the parts must add up to it.")
    status: str = Field(default="pending", index=True, max_length=32)
    created_at: int
    expires_at: int = Field(index=True)
    file_expires_after_s: int | None = Field(default=None, description="The File's expires_after[seconds].")
    file_id: str | None = Field(default=None, max_length=64)


class UploadPart(SQLModel, table=True):
    """One Part's bytes, staged in the blob store under ``uploads/<upload id>/<part id>`` until the Upload ends."""

    __tablename__ = "upload_parts"

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(unique=True, max_length=64)
    upload_id: str = Field(foreign_key="uploads.id", index=True, max_length=64)
    bytes: int = Field(sa_type=BigInteger)
    created_at: int


class StoredCompletion(SQLModel, table=True):
    """A chat completion created with ``store: true`` (``/v1/chat/completions`` list/retrieve/update/delete), written
    off the response path in batches (``serving.stored``)."""

    __tablename__ = "chat_completions"

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(unique=True, max_length=64)
    organization_id: str = Field(foreign_key="organizations.id", index=True, max_length=64)
    model: str = Field(index=True, max_length=512, description="The model as the caller named it.")
    created_at: int = Field(index=True)
    metadata_: dict | None = Field(default=None, sa_type=JSON, sa_column_kwargs={"name": "metadata"})
    messages: list = Field(default_factory=list, sa_type=JSON, description="The request's messages, as checked.")
    request: dict = Field(default_factory=dict, sa_type=JSON, description="The request's other forwarded fields.")
    response: dict = Field(default_factory=dict, sa_type=JSON, description="The chat.completion as answered.")


class CheckpointPermission(SQLModel, table=True):
    """A fine-tuned model or checkpoint shared by its organization with another (``project_id``: tunegate
    organization ids stand in for OpenAI's project ids). The grantee may list, chat with, evaluate it; only the
    owner may delete it, export it or manage its permissions (``storage.permissions``)."""

    __tablename__ = "checkpoint_permissions"
    __table_args__ = (UniqueConstraint("model_id", "project_id", name="uq_checkpoint_permissions_model_project"),)

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(unique=True, max_length=64)
    organization_id: str = Field(foreign_key="organizations.id", index=True, max_length=64, description="The owner.")
    model_id: str = Field(index=True, max_length=512, description="The fine-tuned model or checkpoint id (models.id).")
    project_id: str = Field(foreign_key="organizations.id", index=True, max_length=64, description="The grantee.")
    created_at: int
