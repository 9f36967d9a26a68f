"""Where engines are: gateways publish their replicas' states here; workers look up a ready one."""

from __future__ import annotations

import time
from pathlib import Path

from sqlmodel import col, select

from storage.db import Database
from storage.settings import Settings
from storage.tables import EngineRecord


class EngineRegistry:
    def __init__(self, db: Database) -> None:
        self.db = db

    def publish(self, replicas: list[tuple[str, str, str]]) -> None:
        """(url, base model, state) of each replica, stamped now."""
        stamp = time.time()
        with self.db.session() as s:
            for url, base_model, state in replicas:
                row = s.get(EngineRecord, url) or EngineRecord(url=url, base_model=base_model, state=state, updated_at=stamp)
                row.base_model, row.state, row.updated_at = base_model, state, stamp
                s.add(row)

    def ready(self, base_model: str, max_age: float = 30.0) -> list[str]:
        with self.db.session() as s:
            rows = s.exec(select(EngineRecord).where(
                EngineRecord.base_model == base_model, EngineRecord.state == "ready",
                col(EngineRecord.updated_at) > time.time() - max_age))
            return [r.url for r in rows]


def engine_adapter_path(settings: Settings, key: str, local: Path) -> str:
    """Where an engine reads the adapter stored at blob ``key`` (same path, unless serving.engine_blob_dir)."""
    if settings.serving.engine_blob_dir:
        return settings.serving.engine_blob_dir.rstrip("/") + "/objects/" + key
    return str(local)
