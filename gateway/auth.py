"""Guards: an organization API key for ``/v1`` (then its rate limits), the admin credential for ``/admin``."""

from __future__ import annotations

import asyncio
import logging

from litestar.concurrency import sync_to_thread
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.handlers import BaseRouteHandler

from gateway.services import Services
from storage.accounts import Principal
from storage.db import TRANSIENT_DB_ERRORS, is_transient

log = logging.getLogger("tunegate.gateway")


def bearer(connection: ASGIConnection) -> str | None:
    value = connection.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def services_of(connection: ASGIConnection) -> Services:
    return connection.app.state.services


WATCH_S = 1.0


async def watch_database(services: Services) -> None:
    """While verified keys are cached, ask the database every ``WATCH_S``: unreachable → the cache is emptied, so
    requests that would not touch the database themselves (a chat with a base model) answer the outage's 503 too."""
    keys = services.accounts.keys
    while True:
        await asyncio.sleep(WATCH_S)
        if not len(keys):
            continue
        try:
            await sync_to_thread(services.db.ping)
        except TRANSIENT_DB_ERRORS as exc:
            if is_transient(exc):
                keys.clear()
        except Exception:  # noqa: BLE001 - the watch must not end; a bug here only keeps the cache
            log.exception("database watch failed")


async def require_api_key(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    services, secret = services_of(connection), bearer(connection)
    # a key verified in the last few seconds needs no database round trip (``storage.accounts.KeyCache``)
    principal = services.accounts.cached(secret)
    if principal is None:
        principal = await sync_to_thread(services.accounts.authenticate, secret)
    connection.state.principal = principal
    await services.limiter.admit(connection, principal)


async def require_admin(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    services = services_of(connection)
    configured = services.settings.admin_key.get_secret_value() if services.settings.admin_key else None
    await sync_to_thread(services.accounts.check_admin, bearer(connection), configured)


def provide_principal(request: ASGIConnection) -> Principal:
    return request.state.principal


def provide_services(request: ASGIConnection) -> Services:
    return services_of(request)


ServicesDep = NamedDependency[Services]
PrincipalDep = NamedDependency[Principal]
