"""``ResponsesService``: what the Responses API adds to chat — storing (per organization; ``store`` defaults to
true), ``previous_response_id`` chains, background responses (an asyncio task under a lease; ``cancel``),
``input_items`` and ``input_tokens`` — around the translation of the sibling modules. It does not import the
gateway: a batch worker can call ``create`` too."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from typing import Any

import anyio
import msgspec

from serving import request_body
from serving.proxy import Completions
from serving.responses.chat import _renamed, chat_request
from serving.responses.events import EventStream
from serving.responses.items import _bad
from serving.responses.output import from_chat, skeleton
from serving.responses.request import ResponsesRequest, parse
from storage.accounts import Principal
from storage.errors import InvalidRequest, NotFound, TunegateError
from storage.ids import new_id, now
from storage.responses import ACTIVE, MAX_CONVERSATION_BYTES, ResponseStore

log = logging.getLogger("tunegate.serving")
POLL_S = 2.0  # a background response renews its lease and looks for a cancel from elsewhere this often
LEASE_S = 30.0  # … and is failed ("the gateway restarted") when nobody renewed it for this long
_decode = msgspec.json.Decoder().decode


class ResponsesService:
    """``/v1/responses`` without HTTP: create (JSON, stream or background), retrieve, delete, cancel, input items,
    input token counts. ``store`` may be None (nothing is stored; ``store: true`` is then a 400)."""

    def __init__(self, completions: Completions, store: ResponseStore | None) -> None:
        self.completions, self.store = completions, store
        self._background: dict[str, asyncio.Task[None]] = {}
        # a previous_response_id chain loads at most this much stored JSON: the largest body, twice
        self.max_conversation_bytes = max(MAX_CONVERSATION_BYTES, 2 * completions.limits.max_body_bytes)

    async def respond(
        self,
        principal: Principal,
        body: Any,
        *,
        background_cap: int | None = None,
        hold: Callable[[], Callable[[], None]] | None = None,
    ) -> dict[str, Any] | AsyncGenerator[bytes, None]:
        """The Response object, or (``stream: true``) an iterator of SSE events. Problems found before anything is
        generated (a bad field, an unknown model, an engine that refuses the body) raise, so they are HTTP errors.

        A background response is refused (429) past ``background_cap`` active ones of the organization; ``hold``
        (the gateway's rate-limit admission) is called when one is accepted, and what it returns when it ends."""
        req = parse(body)
        store = self._store_for(req)
        if req.previous_response_id and self.store is None:
            raise _bad("previous_response_id needs stored responses.", "previous_response_id")
        # a stored response can be continued by one that is not stored itself (store: false)
        history = await self._history(principal.organization_id, req.previous_response_id)
        chat = chat_request(req, history, self.completions.limits)
        response = skeleton(req, new_id("resp_"), now(), "in_progress")
        if req.background:
            assert store is not None
            # the model is resolved now, as in the foreground: an unknown one is a 404 here, never a later failure
            await self.completions.pool.resolve(principal.organization_id, req.model)
            response["status"] = "queued"
            await asyncio.to_thread(
                store.add_background,
                principal.organization_id,
                response,
                req.input,
                cap=background_cap,
                lease_s=LEASE_S,
            )
            release = hold() if hold is not None else None
            task = asyncio.create_task(self._run_background(principal, req, chat, response, release))
            self._background[response["id"]] = task
            task.add_done_callback(lambda _: self._background.pop(response["id"], None))
            return response
        if req.stream:
            chat["stream"], chat["stream_options"] = True, {"include_usage": True}
            chunks = await self._chat(principal, chat)
            assert not isinstance(chunks, bytes)
            return self._events(principal, req, response, chunks)
        result = await self._chat(principal, chat)
        assert isinstance(result, bytes)
        done = from_chat(req, _decode(result), response)
        if store is not None:
            await asyncio.to_thread(store.add, principal.organization_id, done, req.input)
        return done

    async def create(self, principal: Principal, body: Any) -> dict[str, Any]:
        """A non-streamed response (for callers without HTTP, e.g. a batch line)."""
        if isinstance(body, dict) and body.get("stream"):
            raise _bad("stream=true is not supported here.", "stream", "unsupported_parameter")
        result = await self.respond(principal, body)
        assert isinstance(result, dict)
        return result

    async def _history(self, org_id: str, previous_response_id: str | None) -> list[dict[str, Any]]:
        if not previous_response_id or self.store is None:
            return []
        return await asyncio.to_thread(
            self.store.conversation, org_id, previous_response_id, self.max_conversation_bytes
        )

    def _store_for(self, req: ResponsesRequest) -> ResponseStore | None:
        if req.store and self.store is None:
            raise _bad("Storing responses is not available here: send store=false.", "store")
        return self.store if req.store else None

    async def _chat(self, principal: Principal, chat: dict[str, Any]) -> bytes | AsyncGenerator[bytes, None]:
        try:
            return await self.completions.create(principal, "chat.completions", chat, usage_as="responses")
        except InvalidRequest as exc:
            raise _renamed(exc) from None

    async def _events(
        self, principal: Principal, req: ResponsesRequest, response: dict[str, Any], chunks: AsyncGenerator[bytes, None]
    ) -> AsyncGenerator[bytes, None]:
        events = EventStream(req, response)
        try:
            for event in events.start():
                yield event
            async for raw in chunks:
                if not raw.startswith(b"data: ") or raw.startswith(b"data: [DONE]"):
                    continue
                chunk = _decode(raw[6:].strip())
                if "error" in chunk:
                    for event in events.failed(chunk["error"] if isinstance(chunk["error"], dict) else {}):
                        yield event
                    return
                for event in events.feed(chunk):
                    yield event
            final, last = events.end()
            if req.store and self.store is not None:
                await asyncio.to_thread(self.store.add, principal.organization_id, final, req.input)
            for event in last:
                yield event
        finally:
            with anyio.CancelScope(shield=True):  # a client that left cancels us; the engine must still hear of it
                await chunks.aclose()

    async def _run_background(
        self,
        principal: Principal,
        req: ResponsesRequest,
        chat: dict[str, Any],
        response: dict[str, Any],
        release: Callable[[], None] | None,
    ) -> None:
        """Generate a background response under its lease: every ``POLL_S`` the lease is renewed and the row read;
        a cancel or delete from any process (another gateway worker too) aborts the engine request. ``release``
        settles the rate-limit admission when it ends, however it ends."""
        assert self.store is not None
        org = principal.organization_id
        work: asyncio.Future[bytes | AsyncGenerator[bytes, None]] | None = None
        try:
            await asyncio.to_thread(self.store.finish, org, {**response, "status": "in_progress"})
            work = asyncio.ensure_future(self._chat(principal, chat))
            while not work.done():
                await asyncio.wait({work}, timeout=POLL_S)
                if work.done():
                    break
                status = await asyncio.to_thread(self.store.renew, org, response["id"], LEASE_S)
                if status not in ACTIVE:  # cancelled or deleted elsewhere: stop the generation
                    work.cancel()
                    with contextlib.suppress(BaseException):
                        await work
                    return
            result = work.result()
            assert isinstance(result, bytes)
            done = from_chat(req, _decode(result), {**response, "status": "in_progress"})
        except asyncio.CancelledError:  # cancel or delete here: closing the engine request aborts the generation
            if work is not None:
                work.cancel()
            raise
        except TunegateError as exc:
            code = (
                "invalid_prompt"
                if isinstance(exc, InvalidRequest)
                else "model_not_found"
                if isinstance(exc, NotFound)
                else "server_error"
            )
            done = {**response, "status": "failed", "error": {"code": code, "message": exc.message}}
        except Exception as exc:  # noqa: BLE001 - recorded on the response, which the caller polls
            log.exception("background response %s failed", response["id"])
            done = {**response, "status": "failed", "error": {"code": "server_error", "message": repr(exc)}}
        finally:
            if release is not None:
                release()
        await asyncio.to_thread(self.store.finish, org, done)

    # --- stored responses ---------------------------------------------------------------------------------------
    def _stored(self) -> ResponseStore:
        if self.store is None:
            raise NotFound("Stored responses are not available here.", param="response_id")
        return self.store

    async def retrieve(self, principal: Principal, response_id: str) -> dict[str, Any]:
        return await asyncio.to_thread(self._stored().get, principal.organization_id, response_id)

    async def delete(self, principal: Principal, response_id: str) -> dict[str, Any]:
        await asyncio.to_thread(self._stored().delete, principal.organization_id, response_id)
        task = self._background.pop(response_id, None)
        if task is not None:
            task.cancel()
        return {"id": response_id, "object": "response", "deleted": True}

    async def cancel(self, principal: Principal, response_id: str) -> dict[str, Any]:
        body = await asyncio.to_thread(
            self._stored().cancel, principal.organization_id, response_id, {"completed_at": None}
        )
        task = self._background.get(response_id)
        if task is not None and body["status"] == "cancelled":
            task.cancel()  # closing the engine request aborts the generation there
        return body

    async def input_items(
        self, principal: Principal, response_id: str, *, limit: int, after: str | None, order: str
    ) -> dict[str, Any]:
        items, more = await asyncio.to_thread(
            self._stored().input_items, principal.organization_id, response_id, limit=limit, after=after, order=order
        )
        return {
            "object": "list",
            "data": items,
            "has_more": more,
            "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None,
        }

    async def input_tokens(self, principal: Principal, body: Any) -> dict[str, Any]:
        """How many tokens the input (with instructions, tools and the previous responses) takes, counted by the
        model's own tokenizer and chat template (vLLM's ``/tokenize``; a 1-token generation on llama.cpp)."""
        if isinstance(body, dict):
            body = {k: v for k, v in body.items() if k not in ("stream", "background", "store")}
        req = parse(body, need_input=False)
        history = await self._history(principal.organization_id, req.previous_response_id)
        if not req.input and not history and not req.instructions:
            return {"object": "response.input_tokens", "input_tokens": 0}
        chat = chat_request(req, history, self.completions.limits)
        checked = request_body.parse("chat.completions", chat, self.completions.limits)
        pool = self.completions.pool
        target = await pool.resolve(principal.organization_id, req.model)
        if target.spec.engine != "vllm":
            chat.update(max_tokens=1, stream=False)
            result = await self.completions.create(
                principal, "chat.completions", chat, usage_as="responses.input_tokens"
            )
            assert isinstance(result, bytes)  # stream=False: one JSON body
            answer = _decode(result)
            return {"object": "response.input_tokens", "input_tokens": int(answer["usage"]["prompt_tokens"])}
        replica = pool.pick(target)
        assert pool.http is not None
        payload = {"model": target.base_model, "messages": checked.source, "add_generation_prompt": True}
        if checked.params.get("tools") and checked.params.get("tool_choice") != "none":
            payload["tools"] = checked.params["tools"]
        answer = await pool.http.post(f"{replica.url}/tokenize", json=payload, headers=replica.auth)
        if answer.status_code != 200:
            raise _bad(f"The engine could not count the input: {answer.text[:300]}", "input")
        return {"object": "response.input_tokens", "input_tokens": int(answer.json()["count"])}
