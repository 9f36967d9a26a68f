"""Checkpoint permission wire shapes (``FineTuningCheckpointPermission``,
``CreateFineTuningCheckpointPermissionRequest``)."""

from __future__ import annotations

from typing import Any

from storage.errors import InvalidRequest
from storage.permissions import MAX_PROJECTS
from storage.tables import CheckpointPermission

ORDERS = ("ascending", "descending")


def permission_object(row: CheckpointPermission) -> dict[str, Any]:
    return {"object": "checkpoint.permission", "id": row.id, "created_at": row.created_at, "project_id": row.project_id}


def project_ids(body: Any) -> list[str]:
    """The create body's ``project_ids`` (the spec's request has no other field: others are refused)."""
    if not isinstance(body, dict):
        raise InvalidRequest(
            "The request body must be a JSON object with project_ids.", param=None, code="invalid_type"
        )
    unknown = sorted(set(body) - {"project_ids"})
    if unknown:
        raise InvalidRequest(f"Unknown parameter: '{unknown[0]}'.", param=unknown[0], code="unknown_parameter")
    ids = body.get("project_ids")
    if ids is None:
        raise InvalidRequest(
            "project_ids is required: the organizations (project ids) to share the model with.",
            param="project_ids",
            code="missing_required_parameter",
        )
    if not isinstance(ids, list) or not ids or len(ids) > MAX_PROJECTS:
        raise InvalidRequest(
            f"project_ids must be a non-empty array of at most {MAX_PROJECTS} project ids.",
            param="project_ids",
            code="invalid_value",
        )
    for i, value in enumerate(ids):
        if not isinstance(value, str) or not value:
            raise InvalidRequest(
                f"project_ids[{i}] must be a non-empty string.", param=f"project_ids[{i}]", code="invalid_type"
            )
    return ids


def order_of(order: str | None) -> str:
    if order is None:
        return "descending"
    if order not in ORDERS:
        raise InvalidRequest(
            f"order must be 'ascending' or 'descending', not {order!r}.", param="order", code="invalid_value"
        )
    return order
