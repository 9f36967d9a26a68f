"""``/v1/evals`` controllers: evals, their runs (jsonl and completions) and output items."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from litestar import Controller, Request, delete, get, post
from litestar.concurrency import sync_to_thread
from litestar.params import FromPath, FromQuery, QueryParameter

from finetune.evals.submit import eval_updates, new_eval, new_run
from gateway.auth import PrincipalDep, ServicesDep
from gateway.openai.common import list_page, read_json
from gateway.openai.evals.protocol import console_base, eval_object, item_object, run_object
from serving.request_body import validate_sampling_params

Limit = Annotated[int, QueryParameter(ge=1, le=100)]
Order = Literal["asc", "desc"]


class EvalsController(Controller):
    path = "/evals"
    tags = ["Evals"]

    @post("/", status_code=200)
    async def create_eval(self, request: Request, services: ServicesDep, principal: PrincipalDep) -> dict[str, Any]:
        body = await read_json(request)

        def create() -> Any:
            row = new_eval(principal.organization_id, body, services.catalog.get)
            services.evals.add(row)
            return row

        return eval_object(await sync_to_thread(create))

    @get("/", sync_to_thread=True)
    def list_evals(
        self,
        services: ServicesDep,
        principal: PrincipalDep,
        limit: Limit = 20,
        after: FromQuery[str | None] = None,
        order: Order = "asc",
    ) -> dict[str, Any]:
        page = services.evals.list_evals(principal.organization_id, limit=limit, after=after, ascending=order == "asc")
        return list_page([eval_object(e) for e in page.items], has_more=page.has_more, ids=True)

    @get("/{eval_id:str}", sync_to_thread=True)
    def retrieve_eval(self, services: ServicesDep, principal: PrincipalDep, eval_id: FromPath[str]) -> dict[str, Any]:
        return eval_object(services.evals.get_eval(principal.organization_id, eval_id))

    @post("/{eval_id:str}", status_code=200)
    async def update_eval(
        self, request: Request, services: ServicesDep, principal: PrincipalDep, eval_id: FromPath[str]
    ) -> dict[str, Any]:
        values = eval_updates(await read_json(request))
        row = await sync_to_thread(services.evals.update_eval, principal.organization_id, eval_id, values)
        return eval_object(row)

    @delete("/{eval_id:str}", status_code=200, sync_to_thread=True)
    def delete_eval(self, services: ServicesDep, principal: PrincipalDep, eval_id: FromPath[str]) -> dict[str, Any]:
        services.evals.delete_eval(principal.organization_id, eval_id)
        return {"object": "eval.deleted", "deleted": True, "eval_id": eval_id}

    # --- runs --------------------------------------------------------------------------------------------
    @post("/{eval_id:str}/runs", status_code=200)
    async def create_run(
        self, request: Request, services: ServicesDep, principal: PrincipalDep, eval_id: FromPath[str]
    ) -> dict[str, Any]:
        body = await read_json(request)
        if services.completions.stored is not None:  # a stored_completions source sees this gateway's latest
            await services.completions.stored.flush()

        def create() -> Any:
            evaluation = services.evals.get_eval(principal.organization_id, eval_id)
            run = new_run(
                principal.organization_id,
                evaluation,
                body,
                services.files,
                services.catalog.get,
                lambda params: validate_sampling_params(
                    params, "data_source.sampling_params", services.settings.requests
                ),
            )
            services.evals.add(run)
            return run

        return run_object(await sync_to_thread(create), console_base(request))

    @get("/{eval_id:str}/runs", sync_to_thread=True)
    def list_runs(
        self,
        request: Request,
        services: ServicesDep,
        principal: PrincipalDep,
        eval_id: FromPath[str],
        limit: Limit = 20,
        after: FromQuery[str | None] = None,
        order: Order = "asc",
        status: FromQuery[str | None] = None,
    ) -> dict[str, Any]:
        page = services.evals.list_runs(
            principal.organization_id, eval_id, limit=limit, after=after, ascending=order == "asc", status=status
        )
        return list_page([run_object(r, console_base(request)) for r in page.items], has_more=page.has_more, ids=True)

    @get("/{eval_id:str}/runs/{run_id:str}", sync_to_thread=True)
    def retrieve_run(
        self,
        request: Request,
        services: ServicesDep,
        principal: PrincipalDep,
        eval_id: FromPath[str],
        run_id: FromPath[str],
    ) -> dict[str, Any]:
        return run_object(services.evals.get_run(principal.organization_id, eval_id, run_id), console_base(request))

    @post(
        ["/{eval_id:str}/runs/{run_id:str}", "/{eval_id:str}/runs/{run_id:str}/cancel"],
        status_code=200,
        sync_to_thread=True,
    )
    def cancel_run(
        self,
        request: Request,
        services: ServicesDep,
        principal: PrincipalDep,
        eval_id: FromPath[str],
        run_id: FromPath[str],
    ) -> dict[str, Any]:
        """The spec's path is POST …/runs/{run_id}; the openai client posts to …/runs/{run_id}/cancel."""
        return run_object(services.evals.cancel_run(principal.organization_id, eval_id, run_id), console_base(request))

    @delete("/{eval_id:str}/runs/{run_id:str}", status_code=200, sync_to_thread=True)
    def delete_run(
        self, services: ServicesDep, principal: PrincipalDep, eval_id: FromPath[str], run_id: FromPath[str]
    ) -> dict[str, Any]:
        services.evals.delete_run(principal.organization_id, eval_id, run_id)
        return {"object": "eval.run.deleted", "deleted": True, "run_id": run_id}

    @get("/{eval_id:str}/runs/{run_id:str}/output_items", sync_to_thread=True)
    def list_items(
        self,
        services: ServicesDep,
        principal: PrincipalDep,
        eval_id: FromPath[str],
        run_id: FromPath[str],
        limit: Limit = 20,
        after: FromQuery[str | None] = None,
        order: Order = "asc",
        status: FromQuery[str | None] = None,
    ) -> dict[str, Any]:
        page = services.evals.list_items(
            principal.organization_id,
            eval_id,
            run_id,
            limit=limit,
            after=after,
            ascending=order == "asc",
            status=status,
        )
        return list_page([item_object(i) for i in page.items], has_more=page.has_more, ids=True)

    @get("/{eval_id:str}/runs/{run_id:str}/output_items/{item_id:str}", sync_to_thread=True)
    def retrieve_item(
        self,
        services: ServicesDep,
        principal: PrincipalDep,
        eval_id: FromPath[str],
        run_id: FromPath[str],
        item_id: FromPath[str],
    ) -> dict[str, Any]:
        return item_object(services.evals.get_item(principal.organization_id, eval_id, run_id, item_id))
