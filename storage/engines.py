"""Where engines are: gateways publish their replicas' states (and the key each requires) here; workers look up a
ready one. The key is for tunegate's own processes: no API shows a row of this table."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlmodel import col, select

from storage.blobs import BlobStore
from storage.db import Database
from storage.settings import Settings
from storage.tables import EngineRecord


@dataclass(frozen=True)
class EngineAddress:
    """How a worker reaches an engine: its URL and the headers it must send."""

    url: str
    api_key: str | None = field(default=None, repr=False)

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def engine_url(engine: EngineAddress) -> str:
    """An engine's identity for placement (``serving.placement``): its URL, as the gateways' pools rank replicas."""
    return engine.url


class EngineRegistry:
    def __init__(self, db: Database) -> None:
        self.db = db

    def publish(self, replicas: Sequence[tuple[str, str, str, str | None]]) -> None:
        """(url, base model, state, api key) of each replica, stamped now."""
        stamp = time.time()
        with self.db.session() as s:
            for url, base_model, state, api_key in replicas:
                row = s.get(EngineRecord, url) or EngineRecord(
                    url=url, base_model=base_model, state=state, updated_at=stamp
                )
                row.base_model, row.state, row.updated_at, row.api_key = base_model, state, stamp, api_key
                s.add(row)

    def ready(self, base_model: str, max_age: float = 30.0) -> list[EngineAddress]:
        with self.db.session() as s:
            rows = s.exec(
                select(EngineRecord).where(
                    EngineRecord.base_model == base_model,
                    EngineRecord.state == "ready",
                    col(EngineRecord.updated_at) > time.time() - max_age,
                )
            )
            return [EngineAddress(r.url, r.api_key) for r in rows]


def engine_adapter_path(settings: Settings, key: str, blobs: BlobStore) -> str:
    """Where an engine reads the adapter stored at blob ``key``: its S3 URL (the engine fetches it into its own
    cache, ``serving.engine_main.FetchAdapters``), or the same path, unless serving.engine_blob_dir."""
    remote = blobs.engine_path(key)
    if remote is not None:
        return remote
    if settings.serving.engine_blob_dir:
        return settings.serving.engine_blob_dir.rstrip("/") + "/objects/" + key
    return str(blobs.local_path(key))
