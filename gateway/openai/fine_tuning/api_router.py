"""``/v1/fine_tuning/jobs`` controllers: parse, call the job store, render."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.concurrency import sync_to_thread
from litestar.params import FromPath, FromQuery, QueryParameter

from finetune.submit import create_job
from gateway.auth import PrincipalDep, ServicesDep
from gateway.openai.common import list_page, read_json
from gateway.openai.fine_tuning.protocol import checkpoint_object, event_object, job_object

Limit = Annotated[int, QueryParameter(ge=1, le=1000)]


class FineTuningJobsController(Controller):
    path = "/fine_tuning/jobs"
    tags = ["Fine-tuning"]

    @post("/", status_code=200)
    async def create(self, request: Request, services: ServicesDep, principal: PrincipalDep) -> dict[str, Any]:
        body = await read_json(request)
        await sync_to_thread(services.quota.check, principal.organization_id)
        job = await sync_to_thread(
            create_job,
            services.settings,
            services.files,
            services.jobs,
            principal.organization_id,
            body,
            lambda model: services.catalog.get(principal.organization_id, model),
        )
        return job_object(job)

    @get("/", sync_to_thread=True)
    def list_jobs(
        self,
        request: Request,
        services: ServicesDep,
        principal: PrincipalDep,
        limit: Limit = 20,
        after: FromQuery[str | None] = None,
    ) -> dict[str, Any]:
        metadata = {
            k[9:-1]: v for k, v in request.query_params.items() if k.startswith("metadata[") and k.endswith("]")
        }
        page = services.jobs.list(principal.organization_id, limit=limit, after=after, metadata=metadata)
        return list_page([job_object(j) for j in page.items], has_more=page.has_more)

    @get("/{job_id:str}", sync_to_thread=True)
    def retrieve(self, services: ServicesDep, principal: PrincipalDep, job_id: FromPath[str]) -> dict[str, Any]:
        return job_object(services.jobs.get(principal.organization_id, job_id))

    @post("/{job_id:str}/cancel", status_code=200, sync_to_thread=True)
    def cancel(self, services: ServicesDep, principal: PrincipalDep, job_id: FromPath[str]) -> dict[str, Any]:
        return job_object(services.jobs.cancel(principal.organization_id, job_id))

    @post("/{job_id:str}/pause", status_code=200, sync_to_thread=True)
    def pause(self, services: ServicesDep, principal: PrincipalDep, job_id: FromPath[str]) -> dict[str, Any]:
        return job_object(services.jobs.pause(principal.organization_id, job_id))

    @post("/{job_id:str}/resume", status_code=200, sync_to_thread=True)
    def resume(self, services: ServicesDep, principal: PrincipalDep, job_id: FromPath[str]) -> dict[str, Any]:
        return job_object(services.jobs.resume(principal.organization_id, job_id))

    @get("/{job_id:str}/events", sync_to_thread=True)
    def events(
        self,
        services: ServicesDep,
        principal: PrincipalDep,
        job_id: FromPath[str],
        limit: Limit = 20,
        after: FromQuery[str | None] = None,
    ) -> dict[str, Any]:
        page = services.jobs.events(principal.organization_id, job_id, limit=limit, after=after)
        return list_page([event_object(e) for e in page.items], has_more=page.has_more)

    @get("/{job_id:str}/checkpoints", sync_to_thread=True)
    def checkpoints(
        self,
        services: ServicesDep,
        principal: PrincipalDep,
        job_id: FromPath[str],
        limit: Limit = 10,
        after: FromQuery[str | None] = None,
    ) -> dict[str, Any]:
        page = services.jobs.checkpoints(principal.organization_id, job_id, limit=limit, after=after)
        return list_page([checkpoint_object(c) for c in page.items], has_more=page.has_more, ids=True)
