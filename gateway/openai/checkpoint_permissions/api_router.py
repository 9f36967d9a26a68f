"""``/v1/fine_tuning/checkpoints/{fine_tuned_model_checkpoint}/permissions[/{permission_id}]``: share a fine-tuned
model or checkpoint with other organizations (``storage.permissions``).

Model ids hold ``/`` and ``:`` (``ft:org/base:…:ckpt-step-3``, sent as ``%2F``), so one ``{rest:path}`` route per
method takes the rest of the path and splits off ``/permissions`` and the permission id itself.
"""

from __future__ import annotations

from typing import Annotated, Any, cast

from litestar import Controller, Request, delete, get, post
from litestar.concurrency import sync_to_thread
from litestar.params import FromPath, FromQuery, QueryParameter

from gateway.auth import PrincipalDep, ServicesDep
from gateway.openai.checkpoint_permissions.protocol import order_of, permission_object, project_ids
from gateway.openai.common import DeletedObject, list_page, read_json
from storage.errors import NotFound
from storage.permissions import PermissionStore

Limit = Annotated[int, QueryParameter(ge=1, le=100)]
SUFFIX = "/permissions"


def _model(rest: str) -> str:
    """The model id of ``<model>/permissions``."""
    rest = rest.lstrip("/")
    if not rest.endswith(SUFFIX) or len(rest) == len(SUFFIX):
        raise _no_route(rest)
    return rest[: -len(SUFFIX)]


def _model_and_permission(rest: str) -> tuple[str, str]:
    """(model id, permission id) of ``<model>/permissions/<permission id>``."""
    model, sep, permission = rest.lstrip("/").rpartition(SUFFIX + "/")
    if not sep or not model or not permission or "/" in permission:
        raise _no_route(rest)
    return model, permission


def _no_route(rest: str) -> NotFound:
    return NotFound(
        f"Unknown path: /v1/fine_tuning/checkpoints/{rest.lstrip('/')} (expected "
        "/v1/fine_tuning/checkpoints/{fine_tuned_model_checkpoint}/permissions).",
        code="unknown_url",
    )


class CheckpointPermissionsController(Controller):
    path = "/fine_tuning/checkpoints"
    tags = ["Fine-tuning"]

    @post("/{rest:path}", status_code=200)
    async def create_permissions(
        self, request: Request, services: ServicesDep, principal: PrincipalDep, rest: FromPath[str]
    ) -> dict[str, Any]:
        """Share the model with each of ``project_ids`` (organization ids); answers the permissions as a list."""
        model = _model(rest)
        ids = project_ids(await read_json(request))
        rows = await sync_to_thread(PermissionStore(services.db).create, principal.organization_id, model, ids)
        return list_page([permission_object(r) for r in rows], has_more=False, ids=True)

    @get("/{rest:path}", sync_to_thread=True)
    def list_permissions(
        self,
        services: ServicesDep,
        principal: PrincipalDep,
        rest: FromPath[str],
        limit: Limit = 10,
        after: FromQuery[str | None] = None,
        project_id: FromQuery[str | None] = None,
        order: FromQuery[str | None] = None,
    ) -> dict[str, Any]:
        model = _model(rest)
        page = PermissionStore(services.db).list(
            principal.organization_id,
            model,
            project_id=project_id,
            limit=limit,
            after=after,
            order=cast(Any, order_of(order)),
        )
        return list_page([permission_object(r) for r in page.items], has_more=page.has_more, ids=True)

    @delete("/{rest:path}", status_code=200, sync_to_thread=True)
    def delete_permission(self, services: ServicesDep, principal: PrincipalDep, rest: FromPath[str]) -> DeletedObject:
        """Revoked at once: the grantee's next request for the model is a 404 (routes opened by a grant are never
        cached, ``serving.pool``), even while the adapter stays loaded on the engines for its owner."""
        model, permission = _model_and_permission(rest)
        row = PermissionStore(services.db).delete(principal.organization_id, model, permission)
        return DeletedObject(id=row.id, object="checkpoint.permission")
