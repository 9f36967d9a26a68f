"""What models an organization can see: configured base models (and their aliases) + its fine-tuned models and
checkpoints + those other organizations shared with it (``storage.permissions``).

Another organization's model is "not found", exactly like one that does not exist, unless it was shared: then it
is seen, used and evaluated under its own id (one adapter on the engines), but not deleted, exported or shared.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass

from sqlmodel import col, select

from storage.db import Database
from storage.errors import NotFound, PermissionDenied
from storage.ids import now
from storage.jobs import owned_model
from storage.permissions import forget_model, granted_models, visible_model
from storage.settings import Settings
from storage.tables import BaseModelRecord, FineTunedModel

ALIAS_OWNER = "system"  # OpenAI's owned_by for its own model names


@dataclass(frozen=True)
class ModelEntry:
    id: str
    created: int
    owned_by: str
    kind: str  # base | fine-tuned | checkpoint
    base_model: str
    adapter_key: str | None = None  # blob key of the PEFT adapter dir (fine-tuned models and checkpoints)
    seq: int = 0


class Catalog:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings

    def sync_base_models(self) -> None:
        """Record the first sighting of every configured base model (gives each a stable ``created``)."""
        with self.db.session() as s:
            known = set(s.exec(select(BaseModelRecord.id)))
            for model_id in self.settings.base_models:
                if model_id not in known:
                    s.add(BaseModelRecord(id=model_id, created_at=now()))

    def _bases(self) -> list[ModelEntry]:
        with self.db.session() as s:
            created = {r.id: r.created_at for r in s.exec(select(BaseModelRecord))}
        return [
            entry
            for model_id, spec in self.settings.base_models.items()
            for entry in (
                ModelEntry(model_id, created.get(model_id, 0), spec.owned_by, "base", model_id),
                *(ModelEntry(alias, created.get(model_id, 0), ALIAS_OWNER, "base", model_id) for alias in spec.aliases),
            )
        ]

    def list(self, org_id: str) -> list[ModelEntry]:
        with self.db.session() as s:
            tuned = s.exec(
                select(FineTunedModel)
                .where(FineTunedModel.organization_id == org_id)
                .order_by(col(FineTunedModel.seq).desc())
            )
            return self._bases() + [_entry(m) for m in tuned] + [_entry(m) for m in granted_models(s, org_id)]

    def get(self, org_id: str, model_id: str) -> ModelEntry:
        for base in self._bases():
            if base.id == model_id:
                return base
        with self.db.session() as s:
            row = visible_model(s, org_id, model_id)
        if row is None:
            raise _not_found(model_id)
        return _entry(row)

    def get_own(self, org_id: str, model_id: str, action: str = "export") -> ModelEntry:
        """``get`` for what only the owner may do (export): a model shared with the caller is a 403."""
        entry = self.get(org_id, model_id)
        if entry.kind != "base" and entry.owned_by != org_id:
            raise _not_owner(model_id, action)
        return entry

    def delete(self, org_id: str, model_id: str) -> ModelEntry:
        if self.settings.base_model_id(model_id) is not None:
            raise PermissionDenied(
                f"You cannot delete the base model '{model_id}'.", param="model", code="model_not_deletable"
            )
        with self.db.session() as s:
            row = owned_model(s, org_id, model_id)
            if row is None:
                if visible_model(s, org_id, model_id) is not None:
                    raise _not_owner(model_id, "delete")
                raise _not_found(model_id)
            entry = _entry(row)
            forget_model(s, model_id)
            s.delete(row)
        return entry

    def newest_seq(self) -> int:
        with self.db.session() as s:
            return s.exec(select(FineTunedModel.seq).order_by(col(FineTunedModel.seq).desc())).first() or 0

    def added_since(self, seq: int) -> builtins.list[ModelEntry]:
        """Models registered after ``seq``, oldest first (the serving warm-up loads the fine-tuned ones)."""
        with self.db.session() as s:
            rows = s.exec(select(FineTunedModel).where(col(FineTunedModel.seq) > seq).order_by(col(FineTunedModel.seq)))
            return [_entry(r) for r in rows]


def _entry(row: FineTunedModel) -> ModelEntry:
    return ModelEntry(
        row.id, row.created_at, row.organization_id, row.kind, row.base_model, row.adapter_key, row.seq or 0
    )


def _not_owner(model_id: str, action: str) -> PermissionDenied:
    return PermissionDenied(
        f"The model '{model_id}' is shared with your organization by its owner; only the owner can {action} it.",
        param="model",
        code="model_not_owned",
    )


def _not_found(model_id: str) -> NotFound:
    return NotFound(
        f"The model '{model_id}' does not exist or you do not have access to it.", param="model", code="model_not_found"
    )
