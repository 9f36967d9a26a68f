"""The ``export`` wire object (a tunegate extension, shaped like OpenAI's job objects)."""

from __future__ import annotations

from typing import Any

from storage.tables import Export


def export_object(row: Export) -> dict[str, Any]:
    return {
        "object": "export",
        "id": row.id,
        "model": row.model,
        "format": row.format,
        "quant": row.quant,
        "system": row.system,
        "status": row.status,
        "progress": round(row.progress, 4),
        "stage": row.stage,
        "output_files": row.output_files,
        "warnings": row.warnings,
        "error": row.error,
        "created_at": row.created_at,
        "finished_at": row.finished_at,
    }
