"""A fine-tuned model as an engine sees it: a LoRA adapter directory, checked before vLLM is asked to load it.

vLLM answers a 500 for an adapter whose rank is above ``--max-lora-rank`` and cannot serve DoRA; both are
caught here and answered as a clear 400 naming the model and the setting to change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from storage.blobs import BlobStore
from storage.engines import engine_adapter_path
from storage.errors import InvalidRequest
from storage.settings import VLLM_LORA_RANKS, Settings


@dataclass(frozen=True)
class Adapter:
    name: str  # engine-side name: the blob key, unique per immutable adapter directory
    path: str  # where the engine reads it
    rank: int


def adapter_for(model_id: str, adapter_key: str, blobs: BlobStore, settings: Settings) -> Adapter:
    serving = settings.serving
    config = _read_config(blobs, adapter_key)
    if config is None:
        raise InvalidRequest(
            f"The files of model '{model_id}' are missing on this server.", param="model", code="model_unavailable"
        )
    rank = max([int(config.get("r") or 0), *(int(v) for v in (config.get("rank_pattern") or {}).values())])
    if rank > serving.max_lora_rank:
        needed = next((r for r in VLLM_LORA_RANKS if r >= rank), rank)
        raise InvalidRequest(
            f"The model '{model_id}' is a LoRA adapter of rank {rank}, above this server's max_lora_rank "
            f"{serving.max_lora_rank}. Set TUNEGATE_SERVING__MAX_LORA_RANK={needed} (serving.max_lora_rank) and "
            "restart, or fine-tune with a smaller lora_rank.",
            param="model",
            code="adapter_rank_too_large",
        )
    if config.get("use_dora"):
        raise InvalidRequest(
            f"The model '{model_id}' is a DoRA adapter, which vLLM cannot serve.",
            param="model",
            code="adapter_not_servable",
        )
    return Adapter(adapter_key, engine_adapter_path(settings, adapter_key, blobs), rank)


_configs: dict[str, dict] = {}


def _read_config(blobs: BlobStore, key: str) -> dict | None:
    """Adapter directories are immutable, so a config read once (one small read, from S3 too) is kept (bounded)."""
    if key in _configs:
        return _configs[key]
    try:
        raw = blobs.read_bytes(f"{key}/adapter_config.json")
        config = json.loads(raw) if raw is not None else None
    except (OSError, ValueError):
        return None
    if config is None:
        return None
    if len(_configs) > 4096:
        _configs.clear()
    _configs[key] = config
    return config
