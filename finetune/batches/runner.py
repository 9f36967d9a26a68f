"""Executes batches in the worker: validate the file, send its requests through the engines, assemble the output.

A batch is claimed under a lease (``finetune.leased.LeasedWorker``) that a thread of its own renews; each step
reads the batch's status and does that step's part:

1. ``validating``: the input file is streamed once; a line that is not a request (not JSON, no custom_id, wrong
   ``url``, a custom_id seen before) gets its error-file line at once — a bad line never fails the batch. An
   empty file, or one over ``batches.max_lines``, fails it. Then ``in_progress`` with ``request_counts.total``.
2. ``in_progress``: the file is streamed again, lines with a stored result skipped (the done set: a batch taken
   over goes on where the last commit left it). Each body is checked by ``serving.request_body`` (the allow-list
   chat and completions use), its model resolved for the batch's organization (another's model: 404 in that
   line) and sent to the engine with the eval runs' client (``finetune.evals.generation.post``), up to
   ``batches.concurrency`` at once, so the replica batches them. Answers are shaped as the chat API's
   (``serving.proxy.Call``) and committed ``batches.chunk_lines`` at a time with their counters and usage rows
   (fenced: nothing once another claim holds the batch). In flight there are at most ``concurrency`` requests
   and one chunk: memory does not grow with the batch.
3. ``finalizing`` (every line has a result) → ``completed``; ``cancelling`` (seen by the lease's thread or a
   commit) → ``cancelled``; past ``expires_at`` → ``expired`` (the lines never sent get ``batch_expired`` error
   lines). Either way the output and error files are assembled from the stored results, page by page, and
   stored with the batch's end in one transaction.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from typing import Any
from uuid import uuid4

import httpx

from finetune.batches import lines
from finetune.batches.lines import Problem, Request
from finetune.evals.generation import engine_client, post
from finetune.evals.runner import EngineTargets, RunFailed
from finetune.leased import LeasedWorker
from serving import request_body
from serving.pool import Target
from serving.proxy import PATHS, Call
from storage.accounts import Principal
from storage.batches import BatchStore, Chunk
from storage.blobs import BlobStore
from storage.db import Database, Retrying
from storage.engines import EngineAddress, EngineRegistry
from storage.errors import NotFound, TunegateError
from storage.files import Files, NewFile
from storage.ids import now
from storage.leases import LeaseLost
from storage.settings import Settings
from storage.tables import Batch, BatchLine, StoredFile, UsageRecord

log = logging.getLogger("tunegate.batches")
Result = BatchLine | tuple[BatchLine, str, Any]  # a result line, or an answered one with its model and usage
ATTEMPTS = 3  # an engine that cannot be reached (restarting) or answers 503 is tried again
# RunFailed codes of the engine resolver → the status a caller of the chat API would have had
RESOLVE_STATUS = {
    "model_not_found": (404, "invalid_request_error"),
    "engine_unavailable": (503, "server_error"),
    "model_unavailable": (503, "server_error"),
}


class BatchWorker(LeasedWorker):
    kind = "batches"

    def __init__(self, settings: Settings, db: Database, blobs: BlobStore) -> None:
        super().__init__(settings)
        self.db, self.blobs, self.registry = db, blobs, EngineRegistry(db)
        # claim and renew: errors must surface; at most limits.running_batches per organization (its override wins)
        self.store = BatchStore(db, settings.limits.running_batches)
        self.durable, self.files = Retrying(self.store), Retrying(Files(db, blobs))
        self.seen: dict[str, str] = {}  # batch id → the status its last renewal saw (a cancel shows here first)
        self.passed_over: str | None = None  # the organization whose batch just gave its time slice up

    def claim(self, lease: str) -> Batch | None:
        """The next batch in the fair order; right after a batch gave its slice up, another organization's first."""
        passed_over, self.passed_over = self.passed_over, None
        if passed_over is not None and (other := self.store.claim(lease, self.lease_s, not_of=passed_over)):
            return other
        return self.store.claim(lease, self.lease_s)

    def heartbeat(self, item_id: str, lease: str) -> bool:
        status = self.store.heartbeat(item_id, lease, self.lease_s)
        if status is not None:
            self.seen[item_id] = status
        return status is not None

    def release(self, item: Batch, lease: str) -> None:
        """A batch left unfinished (the worker stops, the lease was lost) goes back to the queue at once."""
        self.seen.pop(item.id, None)
        self.durable.release(item.id, lease)

    def work(self, batch: Batch, lease: str) -> None:
        log.info("batch worker %s running %s (%s)", self.id, batch.id, batch.status)
        try:
            with self.heartbeat_thread(batch.id, lease) as lost:
                run = BatchRun(self, batch, lease, lost)
                with run.targets:  # the adapters it loaded are unloaded at the end of the claim
                    run.execute()
        except LeaseLost:
            log.info("batch %s was taken over; stopping", batch.id)
        except Exception:  # one bad batch never stops the worker; what failed is logged, never shown to the tenant
            log.exception("batch %s failed", batch.id)
            self.durable.advance(
                batch.id,
                lease,
                from_=("validating", "in_progress", "finalizing", "cancelling"),
                status="failed",
                failed_at=now(),
                lease_owner=None,
                lease_expires_at=None,
                errors=[
                    {
                        "code": "batch_failed",
                        "message": f"Batch {batch.id} failed because of an internal error (logged by the server).",
                        "param": None,
                        "line": None,
                    }
                ],
            )


class _Stop:
    """What ``EngineTargets`` polls while it waits for an engine: the lease lost, or the batch cancelled."""

    def __init__(self, run: BatchRun) -> None:
        self.run = run

    def is_set(self) -> bool:
        return self.run.stopping()


class BatchRun:
    """One claim of one batch: the steps of the module docstring."""

    def __init__(self, worker: BatchWorker, batch: Batch, lease: str, lost: threading.Event) -> None:
        self.worker, self.batch, self.lease, self.lost = worker, batch, lease, lost
        self.settings = worker.settings.batches
        self.endpoint = lines.ENDPOINTS[batch.endpoint]
        self.status = batch.status
        self.principal = Principal(batch.organization_id, batch.api_key_id)
        self.targets = EngineTargets(worker, batch, _Stop(self))
        self.clients: dict[str, httpx.AsyncClient] = {}
        self.limits = worker.settings.requests
        self.started, self.sent, self.next_look = time.monotonic(), 0, 0.0
        self.yielded = False  # the claim gave its time slice up: another organization's batch was waiting
        if self.endpoint == "responses":  # only these need the Responses translation
            from finetune.batches.responses import ResponseLines

            self.responses = ResponseLines(worker.db, batch, worker.settings.requests)

    # --- steps -------------------------------------------------------------------------------------------
    def execute(self) -> None:
        if self.status == "validating" and not self.expired():
            self.validate()
        if self.status == "in_progress" and not self.expired():
            if asyncio.run(self.send_all()):
                self.advance(("in_progress",), status="finalizing", finalizing_at=now())
        if self.yielded:  # the worker's next claim is another organization's batch
            self.worker.passed_over = self.batch.organization_id
        if self.lost.is_set() or self.worker.stopping or self.yielded:
            return  # the next claim goes on from the stored results
        if self.status == "finalizing":
            self.finalize(status="completed", completed_at=now())
        elif self.status == "cancelling":
            self.finalize(status="cancelled", cancelled_at=now())
        elif self.status in ("validating", "in_progress") and self.expired():
            self.finalize(status="expired", expired_at=now(), expire_rest=True)

    def validate(self) -> None:
        batch, done = self.batch, self.worker.durable.done_lines(self.batch.id)
        seen: set[str] = set()
        total, model, chunk = 0, None, Chunk()
        for number, raw in self.input_lines():
            total += 1
            if total > self.settings.max_lines:
                return self.fail(
                    "too_many_requests",
                    f"The input file has more than {self.settings.max_lines} requests (batches.max_lines).",
                    number,
                )
            parsed = lines.parse(number, raw, batch.endpoint, self.limits)
            if isinstance(parsed, Request) and parsed.custom_id in seen:
                parsed = Problem(
                    number,
                    parsed.custom_id,
                    "duplicate_custom_id",
                    f"Line {number}: custom_id {parsed.custom_id!r} was used by an earlier line.",
                )
            if isinstance(parsed, Request):
                seen.add(parsed.custom_id)
                named = parsed.body.get("model")  # the batch's model: the first that fits its column
                model = model or (named if isinstance(named, str) and len(named) <= lines.MAX_MODEL else None)
            elif number not in done:
                chunk.lines.append(lines.unanswered(parsed, batch.id))
                chunk.failed += 1
                if len(chunk) >= self.settings.chunk_lines:
                    self.commit(chunk)
                    chunk = Chunk()
        self.commit(chunk)
        if total == 0:
            return self.fail("empty_file", "The input file has no requests.", None)
        self.advance(("validating",), status="in_progress", in_progress_at=now(), total=total, model=model)

    async def send_all(self) -> bool:
        """Send every line without a result; True when all have one (False: stopped — cancelled, expired, the lease
        lost, the worker stopping)."""
        done = self.worker.durable.done_lines(self.batch.id)
        limit = asyncio.Semaphore(self.settings.concurrency)
        pending: list[Result] = []
        flushing: asyncio.Task[None] | None = None
        in_flight: set[asyncio.Task[Result]] = set()
        resolving = asyncio.Lock()
        async with AsyncExitStack() as self.exits:

            async def flush() -> None:
                nonlocal pending
                taken, pending = pending, []
                try:
                    await asyncio.to_thread(self.commit, self.chunk_of(taken))
                except LeaseLost:
                    self.lost.set()  # another claim holds the batch: stop; what it stored stands

            def result(task: asyncio.Task[Any]) -> None:
                nonlocal flushing
                limit.release()
                in_flight.discard(task)
                if task.cancelled() or task.exception() is not None:
                    return
                pending.append(task.result())
                if len(pending) >= self.settings.chunk_lines and (flushing is None or flushing.done()):
                    flushing = asyncio.create_task(flush())

            stopped = False
            for number, raw in self.input_lines():
                if number in done:
                    continue
                parsed = lines.parse(number, raw, self.batch.endpoint, self.limits)
                if not isinstance(parsed, Request):
                    continue  # recorded by the validation (it cannot be answered)
                await limit.acquire()
                if flushing is not None and flushing.done():
                    flushing.result()  # LeaseLost surfaces here
                if self.stopping():
                    limit.release()
                    stopped = True
                    break
                if await self.slice_over():  # the lines in flight finish and are stored; the rest wait their turn
                    limit.release()
                    self.yielded = True
                    break
                task = asyncio.create_task(self.one(parsed, resolving))
                self.sent += 1
                in_flight.add(task)
                task.add_done_callback(result)
            if stopped:
                for task in list(in_flight):
                    task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
            if flushing is not None:
                await flushing
            if not self.lost.is_set():
                await flush()
            return not stopped and not self.yielded and not self.stopping()

    async def slice_over(self) -> bool:
        """Whether this claim should give the worker back: it ran ``batches.slice_seconds`` and sent at least a
        chunk, and another organization's batch waits for a worker (asked at most once a second). One
        organization's huge batch then never holds a worker while others' wait; resuming is exact (the done set)."""
        clock = time.monotonic()
        if (
            self.sent < self.settings.chunk_lines
            or clock - self.started < self.settings.slice_seconds
            or clock < self.next_look
        ):
            return False
        self.next_look = clock + 1.0
        return await asyncio.to_thread(self.worker.store.others_waiting, self.batch.organization_id)

    def finalize(self, *, expire_rest: bool = False, **end: Any) -> None:
        """Assemble the output and error files from the stored results; store them with the batch's end."""
        batch, blobs = self.batch, self.worker.blobs
        rows: list[StoredFile] = []
        extra_failed = 0
        with blobs.stage() as output, blobs.stage() as errors:
            for result in self.worker.store.results(batch.id, ok=True):
                output.write(result.encode() + b"\n")
            for result in self.worker.store.results(batch.id, ok=False):
                errors.write(result.encode() + b"\n")
            if expire_rest:
                extra_failed, done = self.write_expired(errors)
                if self.status == "validating":  # expired before it was counted
                    end["total"] = done + extra_failed
            ids: dict[str, str] = {}
            try:
                for staged, kind in ((output, "output"), (errors, "error")):
                    if staged.size:
                        staged.close()
                        rows.append(
                            self.worker.files.store_blobs(
                                NewFile(
                                    organization_id=batch.organization_id,
                                    filename=f"{batch.id}_{kind}.jsonl",
                                    purpose="batch_output",
                                    original=staged,
                                    expires_after_s=batch.output_expires_after_s,
                                )
                            )
                        )
                        ids[f"{kind}_file_id"] = rows[-1].id
                with self.worker.db.session() as s:
                    s.add_all(rows)
                    self.worker.store.finish(s, batch.id, self.lease, failed=Batch.failed + extra_failed, **ids, **end)
            except BaseException:
                for row in rows:
                    blobs.delete_prefix(f"files/{row.id}")
                raise
        log.info("batch %s %s", batch.id, end["status"])

    def write_expired(self, errors: Any) -> tuple[int, int]:
        """A ``batch_expired`` error line for each request that was never answered; how many, and how many lines
        have a result."""
        done, count = self.worker.durable.done_lines(self.batch.id), 0
        for number, raw in self.input_lines():
            if number in done:
                continue
            parsed = lines.parse(number, raw, self.batch.endpoint, self.limits)
            if not isinstance(parsed, Request):
                continue
            problem = Problem(
                number,
                parsed.custom_id,
                "batch_expired",
                "This request could not be executed before the completion window expired.",
            )
            errors.write(lines.unanswered(problem, self.batch.id).result.encode() + b"\n")
            count += 1
        return count, len(done)

    # --- one request -------------------------------------------------------------------------------------
    async def one(self, request: Request, resolving: asyncio.Lock) -> Result:
        """The request's result line (and, when answered, the usage it cost); never raises but when cancelled or
        stopped while it waited for an engine (LeaseLost: the batch was cancelled, expired or taken over — the line
        stays without a result, as one never sent)."""
        try:
            return await self._one(request, resolving)
        except LeaseLost:
            raise
        except Exception:  # logged; the tenant's line says only that it failed
            log.exception("batch %s line %d", self.batch.id, request.line)
            return lines.answered(
                request,
                self.batch.id,
                500,
                uuid4().hex,
                lines.error_body(
                    "The request failed because of an internal error (logged by the server).",
                    "server_error",
                    None,
                    "server_error",
                ),
            )

    async def _one(self, request: Request, resolving: asyncio.Lock) -> Result:
        engine_id = uuid4().hex
        try:
            asked, checked = await self.check(request.body)
            async with resolving:
                address, engine_model, target = await self.target(checked.model)
        except TunegateError as exc:
            status = 404 if isinstance(exc, NotFound) else 400
            return lines.answered(
                request,
                self.batch.id,
                status,
                engine_id,
                lines.error_body(exc.message, "invalid_request_error", exc.param, exc.code),
            )
        except RunFailed as exc:
            status, type_ = RESOLVE_STATUS.get(exc.code, (500, "server_error"))
            return lines.answered(
                request,
                self.batch.id,
                status,
                engine_id,
                lines.error_body(exc.message, type_, "model" if status == 404 else None, exc.code),
            )
        upstream = checked.body(engine_model, engine=target.spec.engine, request_id=engine_id)
        sent, answer = await self.send(address, PATHS[checked.endpoint], upstream)
        prefix = "chatcmpl-" if checked.endpoint == "chat.completions" else "cmpl-"
        if sent == 200:
            Call(self.principal, checked.endpoint, target, prefix + engine_id, False).rewrite(answer)
            usage = answer.get("usage")
            if asked is not None:
                answer = await self.responses.answer(asked, answer, request.line)
            return lines.answered(request, self.batch.id, 200, engine_id, answer), checked.model, usage
        message = str(answer["error"]["message"]).replace(engine_model, checked.model)
        if sent in (400, 422):
            status, body = 400, lines.error_body(message, "invalid_request_error", None, "invalid_request")
        else:
            status = 503 if sent in (None, 503) else 500
            body = lines.error_body(f"The engine failed: {message}", "server_error", None, "engine_error")
        return lines.answered(request, self.batch.id, status, engine_id, body)

    async def check(self, body: dict[str, Any]) -> tuple[Any, request_body.EngineRequest]:
        """The line's body through the allow-list (``/v1/responses``: translated onto chat first, as the API does;
        with the checked Responses request)."""
        if self.endpoint == "responses":
            asked, chat = await self.responses.check(body)
            return asked, request_body.parse("chat.completions", chat, self.worker.settings.requests)
        return None, request_body.parse(self.endpoint, body, self.worker.settings.requests)

    async def send(self, address: EngineAddress, path: str, body: dict[str, Any]) -> tuple[int | None, dict]:
        """The engine's answer; an engine that cannot be reached (restarting) or answers 503 is tried again."""
        http = await self.client(address)
        for attempt in range(ATTEMPTS):
            status, answer = await post(http, path, body)
            if status not in (None, 503) or attempt + 1 == ATTEMPTS:
                break
            await asyncio.sleep(1.0 + attempt)
        return status, answer

    async def target(self, model: str) -> tuple[EngineAddress, str, Target]:
        """The engine and engine-side name of ``model`` for the batch's organization, asked for each line
        (``EngineTargets`` resolves a model once — another organization's model is not found, a fine-tuned model's
        adapter is loaded on the engine — and re-checks a route a checkpoint permission opened: revoked, the lines
        after it are 404s)."""
        address, engine_model = await asyncio.to_thread(self.targets.target, model)
        base = self.targets.base(model)
        return address, engine_model, Target(model, base, self.worker.settings.base_models[base], None)

    async def client(self, address: EngineAddress) -> httpx.AsyncClient:
        if address.url not in self.clients:
            timeout = self.worker.settings.serving.request_timeout_seconds
            self.clients[address.url] = await self.exits.enter_async_context(
                engine_client(address, timeout, self.settings.concurrency)
            )
        return self.clients[address.url]

    # --- bookkeeping -------------------------------------------------------------------------------------
    def chunk_of(self, results: list[Result]) -> Chunk:
        chunk, batch = Chunk(), self.batch
        for item in results:
            line, model, usage = item if isinstance(item, tuple) else (item, "", None)
            chunk.lines.append(line)
            if line.ok:
                chunk.completed += 1
            else:
                chunk.failed += 1
            if isinstance(usage, dict):
                prompt, completion = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
                chunk.input_tokens += prompt
                chunk.output_tokens += completion
                chunk.usage.append(
                    UsageRecord(
                        organization_id=batch.organization_id,
                        api_key_id=batch.api_key_id,
                        model=model,
                        endpoint=f"batch.{self.endpoint}",
                        prompt_tokens=prompt,
                        completion_tokens=completion,
                        request_id=batch.id,
                        created_at=now(),
                    )
                )
        return chunk

    def commit(self, chunk: Chunk) -> None:
        if chunk.lines:
            self.status = self.worker.durable.commit(self.batch, self.lease, chunk)

    def advance(self, from_: tuple[str, ...], **values: Any) -> None:
        if not self.worker.durable.advance(self.batch.id, self.lease, from_=from_, **values):
            self.status = self.worker.durable.get(None, self.batch.id).status  # cancelled meanwhile
            return
        self.status = values.get("status", self.status)

    def fail(self, code: str, message: str, line: int | None) -> None:
        self.advance(
            ("validating",),
            status="failed",
            failed_at=now(),
            lease_owner=None,
            lease_expires_at=None,
            errors=[{"code": code, "message": message, "param": None, "line": line}],
        )

    def stopping(self) -> bool:
        if self.worker.seen.get(self.batch.id) == "cancelling":
            self.status = "cancelling"
        return self.status == "cancelling" or self.lost.is_set() or self.worker.stopping or self.expired()

    def expired(self) -> bool:
        return time.time() >= self.batch.expires_at

    def input_lines(self) -> Iterator[tuple[int, bytes | None]]:
        stored = self.worker.files.get(self.batch.organization_id, self.batch.input_file_id)
        with self.worker.blobs.open(stored.blob_key) as fh:
            yield from lines.read(fh, self.limits)


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
