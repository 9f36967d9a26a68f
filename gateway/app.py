"""App wiring: ``create_app(settings)`` builds the Litestar app around one ``Services``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

from litestar import Litestar, Request, Router, get
from litestar.concurrency import sync_to_thread
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin

from finetune.leased import start_workers
from gateway.admin.api_router import AdminController
from gateway.auth import provide_principal, provide_services, require_api_key, watch_database
from gateway.body_limits import limit_json_body
from gateway.console import console_routes
from gateway.errors import EXCEPTION_HANDLERS
from gateway.metrics import count_unmatched, metrics_routes, observe_requests
from gateway.middleware import add_request_id, rate_limited
from gateway.openai.batches.api_router import BatchesController
from gateway.openai.chat.api_router import CompletionsController
from gateway.openai.checkpoint_permissions.api_router import CheckpointPermissionsController
from gateway.openai.evals.api_router import EvalsController
from gateway.openai.exports.api_router import ExportsController
from gateway.openai.files.api_router import FilesController
from gateway.openai.fine_tuning.api_router import FineTuningJobsController
from gateway.openai.graders.api_router import GradersController
from gateway.openai.models.api_router import ModelsController
from gateway.openai.responses.api_router import ResponsesController
from gateway.openai.stored_completions.api_router import StoredCompletionsController
from gateway.openai.uploads.api_router import UploadsController
from gateway.services import Services
from storage.settings import Settings

log = logging.getLogger("tunegate")
VERSION = "0.1.0"


def print_admin_key(secret: str) -> None:
    print(
        f"\n  tunegate generated an admin credential (shown once, stored hashed):\n\n    {secret}\n\n"
        "  Use it as 'Authorization: Bearer …' on /admin, or run `tunegate orgs create` / `tunegate keys create`.\n"
        "  Set TUNEGATE_ADMIN_KEY to choose your own; `tunegate admin rotate` makes a new one.\n",
        file=sys.stderr,
        flush=True,
    )


@get("/health", include_in_schema=False, sync_to_thread=False)
def health(request: Request) -> dict[str, Any]:
    """The gateway is up; each engine's state (starting | ready | down) is listed beside."""
    engines = request.app.state.services.engines.status()
    return {"status": "ok", "engines": [{k: e[k] for k in ("base_model", "state")} for e in engines]}


def create_app(settings: Settings, *, on_admin_key: Callable[[str], None] = print_admin_key) -> Litestar:
    services = Services.build(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        secret = await sync_to_thread(services.prepare)
        if secret:
            on_admin_key(secret)
        sweeper = asyncio.create_task(_sweep_expired(services))
        watch = asyncio.create_task(watch_database(services))
        await services.engines.start()
        usage = asyncio.create_task(services.completions.usage.run())
        stored = asyncio.create_task(services.completions.stored.run()) if services.completions.stored else None
        worker = start_workers(settings, services) if settings.worker.embedded else None
        try:
            yield
        finally:
            sweeper.cancel()
            watch.cancel()
            usage.cancel()
            if stored is not None:
                stored.cancel()
            await asyncio.gather(usage, *([stored] if stored else []), return_exceptions=True)
            await services.engines.stop()
            await services.completions.close()
            await services.limiter.close()
            if worker is not None:
                worker.stop()
            services.close()

    v1 = Router(
        path="/v1",
        route_handlers=[
            FilesController,
            FineTuningJobsController,
            ModelsController,
            CompletionsController,
            EvalsController,
            ExportsController,
            GradersController,
            UploadsController,
            StoredCompletionsController,
            BatchesController,
            CheckpointPermissionsController,
            ResponsesController,
        ],
        guards=[require_api_key],
        middleware=[rate_limited],
        dependencies={"principal": Provide(provide_principal, sync_to_thread=False)},
    )
    app = Litestar(
        route_handlers=[v1, AdminController, health, *console_routes(), *metrics_routes(settings.metrics)],
        middleware=[observe_requests] if settings.metrics != "off" else [],  # off: nothing on the request path
        dependencies={"services": Provide(provide_services, sync_to_thread=False)},
        exception_handlers=EXCEPTION_HANDLERS,
        before_request=limit_json_body,
        before_send=[add_request_id, *([count_unmatched] if settings.metrics != "off" else [])],
        lifespan=[lifespan],
        openapi_config=OpenAPIConfig(
            title="tunegate",
            version=VERSION,
            path="/docs",
            description="OpenAI-compatible fine-tuning and serving gateway.",
            render_plugins=[SwaggerRenderPlugin(), JsonRenderPlugin()],
        ),
        debug=False,
    )
    app.state.services = services
    return app


async def _sweep_expired(services: Services) -> None:
    while True:
        await asyncio.sleep(services.settings.expiry_sweep_seconds)
        try:
            removed = await sync_to_thread(services.files.sweep_expired)
            if removed:
                log.info("purged %d expired file(s)", removed)
            if expired := await sync_to_thread(services.uploads.sweep_expired):
                log.info("expired %d upload(s)", expired)
        except Exception:  # a failed sweep must not end the loop; the next one retries
            log.exception("expiry sweep failed")
