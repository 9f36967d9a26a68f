"""``POST /v1/exports`` checked and turned into a row: every problem is a 400 naming the field, nothing stored.

Body: ``model`` (a base model id or one of the organization's fine-tuned models / checkpoints), ``format``
(``gguf`` merged, ``gguf_adapter`` base GGUF + GGUF LoRA adapter, ``safetensors`` merged HF directory as a tar),
``quant`` for the GGUF formats (default ``q4_k_m``), ``system`` (the Modelfile's SYSTEM prompt).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from finetune.export.gguf import SUPPORTED
from storage.errors import InvalidRequest, NotFound
from storage.ids import new_id, now
from storage.settings import BaseModelSpec
from storage.tables import Export

FORMATS = ("gguf", "gguf_adapter", "safetensors")
DEFAULT_QUANT = "q4_k_m"


def _bad(message: str, param: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def new_export(
    org_id: str,
    body: Any,
    model_of: Callable[[str, str], Any],
    adapter_dir: Callable[[str], Path],
    base_models: Mapping[str, BaseModelSpec],
) -> Export:
    """``model_of(org, id)`` is the catalog's lookup (raises "not found"); ``adapter_dir(key)`` the adapter's folder;
    ``base_models`` the configured ones."""
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.", "body", "invalid_type")
    unknown = sorted(set(body) - {"model", "format", "quant", "system"})
    if unknown:
        raise _bad(f"Unknown parameter: '{unknown[0]}'.", unknown[0], "unknown_parameter")
    model_id = body.get("model")
    if not isinstance(model_id, str) or not model_id:
        raise _bad(
            "'model' is required: a base model or one of your fine-tuned models.", "model", "missing_required_parameter"
        )
    fmt = body.get("format", "gguf")
    if fmt not in FORMATS:
        raise _bad(f"Unsupported format {fmt!r}; one of {', '.join(FORMATS)}.", "format", "unsupported_format")
    quant = body.get("quant")
    if fmt == "safetensors":
        if quant is not None:
            raise _bad(
                "'quant' applies to the GGUF formats only; safetensors keeps the model's own precision.", "quant"
            )
    else:
        quant = quant or DEFAULT_QUANT
        if quant not in SUPPORTED:
            raise _bad(
                f"Unsupported quantization {quant!r}; one of {', '.join(SUPPORTED)}.",
                "quant",
                "unsupported_quantization",
            )
    system = body.get("system")
    if system is not None and (not isinstance(system, str) or '"""' in system or len(system) > 32_000):
        raise _bad(
            '\'system\' must be a string (at most 32000 characters, without """, which a Modelfile cannot quote).',
            "system",
        )
    try:
        entry = model_of(org_id, model_id)
    except NotFound as exc:  # a body field that names nothing is a bad request (like a fine-tuning job's model)
        raise _bad(exc.message, "model", "model_not_found") from None
    spec = base_models.get(entry.base_model)
    if spec is not None and spec.engine == "llama.cpp":
        raise _bad(
            f"'{model_id}' is served from a GGUF file already ({spec.source}); there is nothing to export.",
            "model",
            "unsupported_model",
        )
    if entry.kind == "base" and fmt == "gguf_adapter":
        raise _bad(f"'{model_id}' is a base model: it has no adapter to export; use format 'gguf'.", "format")
    if entry.kind != "base":
        problem = adapter_problem(adapter_dir(entry.adapter_key), fmt)
        if problem:
            raise _bad(problem, "format", "unsupported_adapter")
    return Export(
        id=new_id("export-"),
        organization_id=org_id,
        model=model_id,
        format=fmt,
        quant=quant,
        system=system,
        created_at=now(),
    )


def adapter_problem(adapter_dir: Path, fmt: str) -> str | None:
    """Why this adapter cannot be exported faithfully in ``fmt`` (None: it can)."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if fmt != "gguf_adapter":
        return None  # merging is exact for every adapter peft can load (LoRA, rsLoRA, DoRA, modules_to_save)
    if config.get("use_dora"):
        return (
            "A DoRA adapter has no GGUF adapter form (llama.cpp applies plain LoRA only); export format 'gguf' "
            "to get it merged into the base instead."
        )
    if config.get("modules_to_save"):
        return (
            f"The adapter also trains whole modules ({', '.join(config['modules_to_save'])}), which a GGUF "
            "adapter cannot carry; export format 'gguf' to get it merged into the base instead."
        )
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        return (
            "The adapter has per-module ranks or alphas (rank_pattern/alpha_pattern), which llama.cpp's GGUF adapter "
            "(one alpha for all) cannot express; export format 'gguf' to get it merged into the base instead."
        )
    return None
