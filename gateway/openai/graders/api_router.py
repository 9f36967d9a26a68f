"""``/v1/fine_tuning/alpha/graders/validate`` and ``/run``, as ``client.fine_tuning.alpha.graders.*`` call them."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, post
from litestar.concurrency import sync_to_thread

from gateway.auth import PrincipalDep, ServicesDep
from gateway.openai.common import read_json
from gateway.openai.graders.serving import GraderRuns


def _runs(request: Request, services: ServicesDep) -> GraderRuns:
    state = request.app.state
    if getattr(state, "grader_runs", None) is None:  # built on first use: its sandbox starts processes
        state.grader_runs = GraderRuns(services)
    return state.grader_runs


class GradersController(Controller):
    path = "/fine_tuning/alpha/graders"
    tags = ["Fine-tuning"]

    @post("/validate", status_code=200)
    async def validate_grader(self, request: Request, services: ServicesDep, principal: PrincipalDep) -> dict[str, Any]:
        body = await read_json(request)
        return {"grader": await sync_to_thread(_runs(request, services).check, principal, body)}

    @post("/run", status_code=200)
    async def run_grader(self, request: Request, services: ServicesDep, principal: PrincipalDep) -> dict[str, Any]:
        return await _runs(request, services).run(principal, await read_json(request))
