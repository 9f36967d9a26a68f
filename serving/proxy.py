"""Completions through an engine: forward, stream back, rewrite, account.

The body sent to the engine is built by ``serving.request_body`` from its allow-list (an unknown or engine-internal
field is a 400 naming it), with ``model`` set to the engine-side name and the ids chosen here: every response or
chunk comes back with the caller's ``model``, tunegate's own ``id``, vLLM's null extension fields dropped,
``<think>`` split into ``reasoning_content`` for reasoning models, and usage recorded. A stream always asks vLLM for
usage on every chunk (so that a stream the client drops is accounted for what was generated) and shows the caller
only the final usage chunk, if asked for. Closing the returned iterator (a client that disconnects) closes the
upstream connection, which aborts the request in vLLM. The events that came from the engine in one read go on to
the client as one write (``joined``): no added wait, and one trip through the ASGI send chain instead of one per
chunk.

Requests go to engines through ``serving.upstream`` (aiohttp: the hot path), not the pool's httpx client.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

import aiohttp
import msgspec

from serving import request_body, tools
from serving.engines import Replica
from serving.metrics import note_model
from serving.pool import EnginePool, Target
from serving.reasoning import ThinkSplitter, split
from serving.request_body import Endpoint
from serving.stored import Capture, StoredCompletionWriter, capture
from serving.upstream import BROKEN, EngineUnreachable, Upstream, read_body
from serving.usage import UsageRecorder
from storage.accounts import Principal
from storage.errors import InvalidRequest, NotFound, TunegateError, Unavailable, UpstreamFailed
from storage.settings import RequestLimits

log = logging.getLogger("tunegate.serving")

PATHS: dict[Endpoint, str] = {"chat.completions": "/v1/chat/completions", "completions": "/v1/completions"}
ATTEMPTS = 3

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
# vLLM extension fields, dropped when null so responses look like OpenAI's.
_TOP = (
    "prompt_logprobs",
    "prompt_token_ids",
    "prompt_text",
    "kv_transfer_params",
    "ec_transfer_params",
    "metrics",
    "service_tier",
)
_CHOICE = ("stop_reason", "token_ids", "routed_experts", "prompt_logprobs", "prompt_token_ids")
_USAGE = ("prompt_tokens_details", "completion_tokens_details")
_MESSAGE = ("annotations", "audio", "function_call", "reasoning")


DONE_EVENT = b"data: [DONE]\n\n"  # a stream's end as OpenAI's clients see it (the rate limiter settles before it)


def sse(obj: Any) -> bytes:
    return b"data: " + _encode(obj) + b"\n\n"


def error_event(message: str, type_: str = "server_error", code: str | None = None) -> bytes:
    return sse({"error": {"message": message, "type": type_, "param": None, "code": code}})


class Completions:
    def __init__(self, pool: EnginePool, usage: UsageRecorder, stored: StoredCompletionWriter | None = None) -> None:
        self.pool, self.usage, self.stored = pool, usage, stored  # stored: where ``store: true`` answers go
        self.limits: RequestLimits = pool.settings.requests
        self.upstream = Upstream(pool.settings.serving)

    async def close(self) -> None:
        await self.upstream.close()

    async def create(
        self, principal: Principal, endpoint: Endpoint, body: Any, *, usage_as: str | None = None, joined: bool = False
    ) -> bytes | AsyncGenerator[bytes, None]:
        """The JSON body of the answer, or (``stream: true``) an iterator of SSE events. ``usage_as``: the endpoint
        usage is recorded under (``responses`` for a Responses request translated onto chat). ``joined``: each item
        is the events of one read from the engine, joined (for a client's HTTP stream), not one event (for callers
        that parse them)."""
        request = request_body.parse(endpoint, body, self.limits)
        kept = capture(principal, body, request) if self.stored is not None else None
        target = await self.pool.resolve(principal.organization_id, request.model)
        tools.require(
            target.model,
            target.base_model,
            tools.support(target.base_model, target.spec, self.pool.settings),
            request.params,
        )
        note_model(target.model)
        engine_id = uuid4().hex
        upstream = request.body(target.engine_model, engine=target.spec.engine, request_id=engine_id)
        replica, response = await self._send(target, request, _encode(upstream))
        prefix = "chatcmpl-" if endpoint == "chat.completions" else "cmpl-"
        call = Call(principal, usage_as or endpoint, target, prefix + engine_id, request.include_usage)
        if not request.stream:
            try:
                data = _decode(await read_body(response))
            finally:
                replica.in_flight -= 1
            call.rewrite(data)
            self.usage.add(principal, target.model, call.endpoint, data.get("usage"), call.id)
            if kept is not None and self.stored is not None:
                self.stored.queue(kept.row(data))
            return _encode(data)
        return self._relay(call, replica, response, kept, joined)

    async def _send(
        self, target: Target, request: request_body.EngineRequest, content: bytes
    ) -> tuple[Replica, aiohttp.ClientResponse]:
        for attempt in range(ATTEMPTS):
            replica = await self.pool.acquire(target)
            replica.in_flight += 1
            try:
                response = await self.upstream.post(
                    replica.url + PATHS[request.endpoint], content, {"content-type": "application/json", **replica.auth}
                )
            except EngineUnreachable as exc:  # never sent: another replica may take it
                replica.in_flight -= 1
                replica.set_state("down", f"connection failed: {exc}")
                continue
            except BROKEN as exc:  # sent, then the engine hung up or went silent before answering
                replica.in_flight -= 1
                log.warning("request to %s failed: %r", replica.url, exc)
                raise UpstreamFailed(f"The engine failed: {type(exc).__name__}.", code="engine_error") from exc
            except BaseException:
                replica.in_flight -= 1
                raise
            if response.status < 400:
                return replica, response
            replica.in_flight -= 1
            message = _message(await read_body(response))
            if response.status == 404 and target.adapter is not None and attempt + 1 < ATTEMPTS:
                self.pool.lost_adapter(replica, target)  # the engine restarted and forgot it: load again
                continue
            raise _translate(response.status, message, target, request)
        raise Unavailable(f"No engine for '{target.base_model}' answered; retry shortly.", code="engine_unavailable")

    async def _relay(
        self,
        call: Call,
        replica: Replica,
        response: aiohttp.ClientResponse,
        kept: Capture | None = None,
        joined: bool = False,
    ) -> AsyncGenerator[bytes, None]:
        done = ended = False
        try:
            buffer = b""
            async for piece in response.content.iter_any():
                buffer += piece
                if b"\r" in buffer:  # sse-starlette (llama-cpp-python's server) ends lines with CRLF
                    buffer = buffer.replace(b"\r\n", b"\n")
                events: list[bytes] = []  # what this read completed
                while (end := buffer.find(b"\n\n")) >= 0:
                    event, buffer = buffer[:end], buffer[end + 2 :]
                    if not event.startswith(b"data: "):
                        continue
                    payload = event[6:]
                    if payload == b"[DONE]":
                        done = True  # the usage is final: recorded before the client sees the end
                        self.usage.add(call.principal, call.target.model, call.endpoint, call.usage, call.id)
                        events.append(DONE_EVENT)
                        continue
                    out = call.chunk(_decode(payload))
                    if out is not None:
                        if kept is not None:
                            kept.feed(out)
                        events.append(sse(out))
                if joined and events:
                    yield b"".join(events)  # one write to the client, one trip through the ASGI send chain
                elif events:
                    for one in events:
                        yield one
            ended = True
            if not done:
                yield error_event("The engine ended the stream early.", code="engine_error")
        except BROKEN as exc:  # the engine died, hung up or went silent; its supervisor notices and restarts it
            log.warning("stream from %s broke: %r", replica.url, exc)
            yield error_event(f"The engine failed mid-stream: {type(exc).__name__}.", code="engine_error")
        finally:
            replica.in_flight -= 1
            # read to the end: the connection is kept; else (a client that left cancels us) it is closed, at
            # once and without awaiting anything, and the engine aborts the generation
            if ended:
                response.release()
            else:
                response.close()
            if not done:  # else recorded at [DONE]
                self.usage.add(call.principal, call.target.model, call.endpoint, call.usage, call.id)
            if kept is not None and done and self.stored is not None:  # a stream cut short is not stored
                kept.usage = call.usage
                self.stored.queue(kept.row(kept.streamed()))


@dataclass
class Call:
    """One request's rewriting state across the chunks of a stream."""

    principal: Principal
    endpoint: str  # what usage is recorded under
    target: Target
    id: str  # tunegate's response id (never the engine's, which a caller could have shaped)
    client_wants_usage: bool
    usage: dict | None = None  # the latest seen: vLLM reports it on every chunk of a stream
    splitters: dict[int, ThinkSplitter] = field(default_factory=dict)

    def rewrite(self, data: dict[str, Any]) -> None:
        _clean_usage(data.get("usage"))
        for _, message in self._messages(data, "message"):
            if self.target.spec.reasoning and isinstance(message.get("content"), str):
                message["reasoning_content"], message["content"] = split(message["content"])

    def chunk(self, data: dict[str, Any]) -> dict[str, Any] | None:
        if "error" in data:
            return {"error": _envelope(data["error"], self.target)}
        if data.get("usage"):
            self.usage = _clean_usage(data["usage"])
        if not data.get("choices") and "usage" in data:  # the usage chunk
            if not self.client_wants_usage:
                return None
        elif self.client_wants_usage:
            data["usage"] = None
        else:
            data.pop("usage", None)
        for choice, delta in self._messages(data, "delta"):
            if self.target.spec.reasoning:
                self._split(choice, delta)
        return data

    def _messages(self, data: dict[str, Any], key: str) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """Give ``data`` the caller's model and drop vLLM's null extras; yield each choice with its ``key``
        (``message`` or a stream's ``delta``), cleaned too."""
        data["model"], data["id"] = self.target.model, self.id
        _drop_nulls(data, _TOP)
        for choice in data.get("choices") or ():
            _drop_nulls(choice, _CHOICE)
            message = choice.get(key)
            if isinstance(message, dict):
                _fix_message(message)
                yield choice, message

    def _split(self, choice: dict[str, Any], delta: dict[str, Any]) -> None:
        splitter = self.splitters.setdefault(choice.get("index", 0), ThinkSplitter())
        reasoning, content = splitter.feed(delta.get("content") or "")
        if choice.get("finish_reason") is not None:
            more_reasoning, more_content = splitter.flush()
            reasoning, content = reasoning + more_reasoning, content + more_content
        if "content" in delta or reasoning:
            delta["content"] = content
            delta["reasoning_content"] = reasoning or None


def _drop_nulls(obj: dict[str, Any], keys: tuple[str, ...]) -> None:
    for key in keys:
        if key in obj and obj[key] is None:
            del obj[key]


def _clean_usage(usage: Any) -> Any:
    if isinstance(usage, dict):
        _drop_nulls(usage, _USAGE)
    return usage


def _fix_message(message: dict[str, Any]) -> None:
    reasoning = message.get("reasoning")  # vLLM's own reasoning parser, where an engine runs one
    if reasoning is not None:
        message["reasoning_content"] = message.pop("reasoning")
    _drop_nulls(message, _MESSAGE)
    if message.get("tool_calls") == []:
        del message["tool_calls"]
    for call in message.get("tool_calls") or ():  # vLLM's streamed calls (guided required/named) send name: null
        if isinstance(call, dict) and isinstance(call.get("function"), dict):
            _drop_nulls(call["function"], ("name", "arguments"))


def _message(payload: bytes) -> dict[str, Any]:
    try:
        error = _decode(payload)["error"]
        return error if isinstance(error, dict) else {"message": str(error)}
    except (msgspec.DecodeError, KeyError, TypeError):
        return {"message": payload[:500].decode("utf-8", "replace")}


def _envelope(error: dict[str, Any] | Any, target: Target) -> dict[str, Any]:
    if not isinstance(error, dict):
        error = {"message": str(error)}
    message = str(error.get("message", "The engine failed.")).replace(target.engine_model, target.model)
    code = error.get("code")
    return {
        "message": message,
        "type": "server_error" if code == 500 else "invalid_request_error",
        "param": error.get("param"),
        "code": code if isinstance(code, str) else None,
    }


def _translate(
    status: int, error: dict[str, Any], target: Target, request: request_body.EngineRequest
) -> TunegateError:
    message = str(error.get("message", "")).replace(target.engine_model, target.model)
    param = error.get("param") if isinstance(error.get("param"), str) else None
    if status in (400, 413, 422) and "maximum context length" in message:  # vLLM checks against its max_model_len
        source = "messages" if request.endpoint == "chat.completions" else "prompt"
        field = param if param in request.params else source
        return InvalidRequest(message, param=field, code="context_length_exceeded")
    if status == 404:
        return NotFound(
            f"The model '{target.model}' does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )
    if status in (400, 422):
        return InvalidRequest(message or "The engine rejected the request.", param=param, code="invalid_request")
    if status == 503:
        return Unavailable(
            f"The engine for '{target.base_model}' is overloaded or restarting: {message}", code="engine_unavailable"
        )
    return UpstreamFailed(f"The engine failed: {message or status}", code="engine_error")
