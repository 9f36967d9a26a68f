"""Models wire schemas (``Model``)."""

from __future__ import annotations

from typing import Literal

import msgspec

from serving.catalog import ModelEntry


class ModelObject(msgspec.Struct):
    id: str
    created: int
    owned_by: str
    object: Literal["model"] = "model"

    @classmethod
    def of(cls, entry: ModelEntry) -> ModelObject:
        return cls(id=entry.id, created=entry.created, owned_by=entry.owned_by)
