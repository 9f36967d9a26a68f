"""Checkpoint permissions: an organization shares one of its fine-tuned models or checkpoints with others.

``/v1/fine_tuning/checkpoints/{model}/permissions`` (``project_ids``: tunegate organization ids stand in for OpenAI
project ids). A grantee sees the model (``/v1/models``), chats with it and evaluates it under the model's own id, so
engines keep one copy of the adapter (its name is the blob key, whoever asks); it cannot delete, export or share
it. Only the owner lists, adds and revokes permissions; revoking ends access with the next request (the gateway
never caches a route that a grant opened, see ``serving.pool``).

``visible_model`` is the one lookup every "may this organization use that model" question goes through.
"""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy import or_
from sqlmodel import Session, col, delete, exists, select

from storage.db import Database
from storage.errors import InvalidRequest, NotFound, PermissionDenied
from storage.files import Page, keyset_page
from storage.ids import new_id, now
from storage.tables import CheckpointPermission, FineTunedModel, Organization

MAX_PROJECTS = 100  # project ids in one create request


def _granted_to(org_id: str) -> Any:
    """SQL: a permission of the model's owner grants it to ``org_id``."""
    return exists().where(
        col(CheckpointPermission.model_id) == FineTunedModel.id,
        col(CheckpointPermission.organization_id) == FineTunedModel.organization_id,
        col(CheckpointPermission.project_id) == org_id,
    )


def visible_model(s: Session, org_id: str, model_id: str) -> FineTunedModel | None:
    """The fine-tuned model or checkpoint ``model_id`` if ``org_id`` owns it or was granted it, else None."""
    return s.exec(
        select(FineTunedModel).where(
            FineTunedModel.id == model_id, or_(col(FineTunedModel.organization_id) == org_id, _granted_to(org_id))
        )
    ).first()


def granted_models(s: Session, org_id: str) -> list[FineTunedModel]:
    """Other organizations' models shared with ``org_id``, newest first."""
    return list(
        s.exec(
            select(FineTunedModel)
            .where(FineTunedModel.organization_id != org_id, _granted_to(org_id))
            .order_by(col(FineTunedModel.seq).desc())
        ).all()
    )


def forget_model(s: Session, model_id: str) -> None:
    """A deleted model takes its permissions with it (a model later registered under the same id starts unshared)."""
    s.exec(delete(CheckpointPermission).where(col(CheckpointPermission.model_id) == model_id))


class PermissionStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, org_id: str, model_id: str, project_ids: list[str]) -> list[CheckpointPermission]:
        """Grant ``model_id`` to each of ``project_ids`` (a grant that exists is returned as it is)."""
        with self.db.session() as s:
            _owned(s, org_id, model_id)
            known = set(s.exec(select(Organization.id).where(col(Organization.id).in_(project_ids))))
            for i, project in enumerate(project_ids):
                if project == org_id:
                    raise InvalidRequest(
                        f"project_ids[{i}] is the organization that owns '{model_id}'; it needs no permission.",
                        param=f"project_ids[{i}]",
                        code="invalid_project_id",
                    )
                if project not in known:
                    raise InvalidRequest(
                        f"No such project: {project}.", param=f"project_ids[{i}]", code="invalid_project_id"
                    )
            existing = {
                p.project_id: p
                for p in s.exec(
                    select(CheckpointPermission).where(
                        CheckpointPermission.model_id == model_id, col(CheckpointPermission.project_id).in_(project_ids)
                    )
                )
            }
            made: list[CheckpointPermission] = []
            for project in dict.fromkeys(project_ids):  # once each, in the order given
                row = existing.get(project)
                if row is None:
                    row = CheckpointPermission(
                        id=new_id("cp_"),
                        organization_id=org_id,
                        model_id=model_id,
                        project_id=project,
                        created_at=now(),
                    )
                    s.add(row)
                    s.flush()
                made.append(row)
            for row in made:
                s.refresh(row)
                s.expunge(row)
            return made

    def list(
        self,
        org_id: str,
        model_id: str,
        *,
        project_id: str | None,
        limit: int,
        after: str | None,
        order: Literal["ascending", "descending"],
    ) -> Page[CheckpointPermission]:
        mine = [CheckpointPermission.model_id == model_id, CheckpointPermission.organization_id == org_id]
        where = [*mine, *([CheckpointPermission.project_id == project_id] if project_id is not None else [])]

        def missing(after: str) -> NotFound:
            return NotFound(f"No such checkpoint permission: {after}", param="after", code="permission_not_found")

        with self.db.session() as s:
            _owned(s, org_id, model_id)
            return keyset_page(
                s,
                CheckpointPermission,
                where,
                limit=limit,
                after=after,
                ascending=order == "ascending",
                missing=missing,
                anchor_where=mine,
            )

    def delete(self, org_id: str, model_id: str, permission_id: str) -> CheckpointPermission:
        with self.db.session() as s:
            _owned(s, org_id, model_id)
            row = s.exec(
                select(CheckpointPermission).where(
                    CheckpointPermission.id == permission_id,
                    CheckpointPermission.model_id == model_id,
                    CheckpointPermission.organization_id == org_id,
                )
            ).first()
            if row is None:
                raise NotFound(
                    f"No such checkpoint permission: {permission_id}",
                    param="permission_id",
                    code="permission_not_found",
                )
            s.delete(row)
            return row


def _owned(s: Session, org_id: str, model_id: str) -> FineTunedModel:
    """The caller's own model; a model it only sees through a grant is a 403, any other a 404."""
    row = visible_model(s, org_id, model_id)
    if row is None:
        raise NotFound(
            f"The model '{model_id}' does not exist or you do not have access to it.",
            param="fine_tuned_model_checkpoint",
            code="model_not_found",
        )
    if row.organization_id != org_id:
        raise PermissionDenied(
            f"The model '{model_id}' is shared with your organization; only the organization "
            "that owns it can manage its permissions.",
            param="fine_tuned_model_checkpoint",
            code="model_not_owned",
        )
    return row
