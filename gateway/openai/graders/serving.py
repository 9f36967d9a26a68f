"""Graders run for ``/v1/fine_tuning/alpha/graders/run``, in the gateway: the one engine, with

- Python graders in the sandbox pool (separate, locked-down processes — never this process),
- model graders' judges reached through the gateway's own serving path (``Completions``: the organization's
  models only, batched by the engine, usage recorded for the organization),
- ``cosine`` embeddings from the helper process.

The engine is synchronous; it runs in a worker thread and reaches the event loop for judge calls.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from litestar.concurrency import sync_to_thread

from finetune.graders import validate
from finetune.graders.embeddings import Embedder
from finetune.graders.engine import GraderEngine
from finetune.graders.sandbox import SandboxPool
from finetune.graders.templates import sample_namespace
from gateway.openai.graders.protocol import run_response
from gateway.services import Services
from storage.accounts import Principal
from storage.errors import InvalidRequest, TunegateError


class GraderRuns:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.sandbox = SandboxPool()
        self.embed = Embedder()

    def check(self, principal: Principal, body: Any) -> dict[str, Any]:
        """The request's grader, checked (judge models must be the organization's)."""
        if not isinstance(body, dict):
            raise InvalidRequest("The request body must be a JSON object.", code="invalid_value")
        if "grader" not in body:
            raise InvalidRequest("You must provide a grader.", param="grader", code="missing_required_parameter")
        return validate.check(body["grader"], "grader", lambda model: self._model_exists(principal, model))

    def _model_exists(self, principal: Principal, model: str) -> None:
        self.services.catalog.get(principal.organization_id, model)

    async def run(self, principal: Principal, body: Any) -> dict[str, Any]:
        grader = await sync_to_thread(self.check, principal, body)
        sample, item = body.get("model_sample"), body.get("item") if body.get("item") is not None else {}
        if not isinstance(sample, str):
            raise InvalidRequest(
                "model_sample must be a string.",
                param="model_sample",
                code="missing_required_parameter" if sample is None else "invalid_type",
            )
        if not isinstance(item, dict):
            raise InvalidRequest("item must be an object.", param="item", code="invalid_type")

        loop = asyncio.get_running_loop()

        def judge(model: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:  # runs in the worker thread
            return asyncio.run_coroutine_threadsafe(self._judge(principal, model, bodies), loop).result()

        engine = GraderEngine(sandbox=self.sandbox, judge=judge, embed=self.embed)
        started = time.perf_counter()
        [outcome] = await sync_to_thread(
            engine.grade, grader, [(sample_namespace(sample), item)], principal.organization_id
        )
        return run_response(grader, outcome, time.perf_counter() - started)

    async def _judge(self, principal: Principal, model: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        async def one(body: dict[str, Any]) -> dict[str, Any]:
            try:
                answer = await self.services.completions.create(principal, "chat.completions", {**body, "model": model})
            except TunegateError as exc:
                return {"error": {"message": exc.message, "code": exc.code}}
            return json.loads(answer) if isinstance(answer, bytes) else {"error": {"message": "unexpected stream"}}

        return list(await asyncio.gather(*(one(b) for b in bodies)))

    def close(self) -> None:
        self.sandbox.close()
        self.embed.close()
