"""Completions through an engine: forward, stream back, rewrite, account.

The request body goes to vLLM as the caller sent it (unknown fields included: vLLM's sampling extensions work) with
``model`` set to the engine-side name. Every response or chunk comes back with the caller's ``model``, vLLM's null
extension fields dropped, ``<think>`` split into ``reasoning_content`` for reasoning models, and usage recorded.
A stream always asks the engine for usage (to account it) and drops that chunk if the caller did not ask for it.
Closing the returned iterator (a client that disconnects) closes the upstream connection, which aborts the
request in vLLM.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import httpx
import msgspec

from serving.engines import Replica
from serving.pool import EnginePool, Target
from serving.reasoning import ThinkSplitter, split
from serving.usage import UsageRecorder
from storage.accounts import Principal
from storage.errors import InvalidRequest, NotFound, TunegateError, Unavailable, UpstreamFailed

log = logging.getLogger("tunegate.serving")

Endpoint = Literal["chat.completions", "completions"]
PATHS: dict[Endpoint, str] = {"chat.completions": "/v1/chat/completions", "completions": "/v1/completions"}
ATTEMPTS = 3

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
# vLLM extension fields, dropped when null so responses look like OpenAI's.
_TOP = ("prompt_logprobs", "prompt_token_ids", "prompt_text", "kv_transfer_params", "ec_transfer_params", "metrics",
        "service_tier")
_CHOICE = ("stop_reason", "token_ids", "routed_experts", "prompt_logprobs", "prompt_token_ids")
_USAGE = ("prompt_tokens_details", "completion_tokens_details")
_MESSAGE = ("annotations", "audio", "function_call", "reasoning")


def sse(obj: Any) -> bytes:
    return b"data: " + _encode(obj) + b"\n\n"


def error_event(message: str, type_: str = "server_error", code: str | None = None) -> bytes:
    return sse({"error": {"message": message, "type": type_, "param": None, "code": code}})


class Completions:
    def __init__(self, pool: EnginePool, usage: UsageRecorder) -> None:
        self.pool, self.usage = pool, usage

    async def create(self, principal: Principal, endpoint: Endpoint, body: dict[str, Any],
                     request_id: str | None = None) -> bytes | AsyncIterator[bytes]:
        """The JSON body of the answer, or (``stream: true``) an iterator of SSE events."""
        _check(endpoint, body)
        target = await self.pool.resolve(principal.organization_id, body["model"])
        upstream = dict(body, model=target.engine_model)
        if target.spec.engine == "llama.cpp":
            upstream.setdefault("repeat_penalty", 1.0)  # llama-cpp-python's server defaults to 1.1; OpenAI has none
        stream = body.get("stream") is True
        options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
        if stream:
            upstream["stream_options"] = {**options, "include_usage": True}
        replica, response = await self._send(target, PATHS[endpoint], _encode(upstream))
        call = Call(principal, endpoint, target, request_id, bool(options.get("include_usage")))
        if not stream:
            try:
                data = _decode(await response.aread())
            finally:
                replica.in_flight -= 1
                await response.aclose()
            call.rewrite(data)
            self.usage.add(principal, target.model, endpoint, data.get("usage"), data.get("id") or request_id)
            return _encode(data)
        return self._relay(call, replica, response)

    async def _send(self, target: Target, path: str, content: bytes) -> tuple[Replica, httpx.Response]:
        assert self.pool.http is not None
        for attempt in range(ATTEMPTS):
            replica = await self.pool.acquire(target)
            replica.in_flight += 1
            try:
                request = self.pool.http.build_request("POST", replica.url + path, content=content,
                                                       headers={"content-type": "application/json"})
                response = await self.pool.http.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                replica.in_flight -= 1
                replica.set_state("down", f"connection failed: {exc!r}")
                continue
            except BaseException:
                replica.in_flight -= 1
                raise
            if response.status_code < 400:
                return replica, response
            replica.in_flight -= 1
            try:
                payload = await response.aread()
            finally:
                await response.aclose()
            message = _message(payload)
            if response.status_code == 404 and target.adapter is not None and attempt + 1 < ATTEMPTS:
                self.pool.lost_adapter(replica, target)  # the engine restarted and forgot it: load again
                continue
            raise _translate(response.status_code, message, target)
        raise Unavailable(f"No engine for '{target.base_model}' answered; retry shortly.", code="engine_unavailable")

    async def _relay(self, call: "Call", replica: Replica, response: httpx.Response) -> AsyncIterator[bytes]:
        done = False
        try:
            buffer = b""
            async for piece in response.aiter_raw():
                buffer += piece
                if b"\r" in buffer:  # sse-starlette (llama-cpp-python's server) ends lines with CRLF
                    buffer = buffer.replace(b"\r\n", b"\n")
                while (end := buffer.find(b"\n\n")) >= 0:
                    event, buffer = buffer[:end], buffer[end + 2:]
                    if not event.startswith(b"data: "):
                        continue
                    payload = event[6:]
                    if payload == b"[DONE]":
                        done = True
                        yield b"data: [DONE]\n\n"
                        continue
                    out = call.chunk(_decode(payload))
                    if out is not None:
                        yield sse(out)
            if not done:
                yield error_event("The engine ended the stream early.", code="engine_error")
        except httpx.HTTPError as exc:  # the engine died or hung up; its supervisor notices and restarts it
            log.warning("stream from %s broke: %r", replica.url, exc)
            yield error_event(f"The engine failed mid-stream: {type(exc).__name__}.", code="engine_error")
        finally:
            replica.in_flight -= 1
            with anyio.CancelScope(shield=True):  # a client that left cancels us; the engine must still hear of it
                await response.aclose()
            self.usage.add(call.principal, call.target.model, call.endpoint, call.usage, call.id or call.request_id)


@dataclass
class Call:
    """One request's rewriting state across the chunks of a stream."""

    principal: Principal
    endpoint: Endpoint
    target: Target
    request_id: str | None
    client_wants_usage: bool
    usage: dict | None = None
    id: str | None = None
    splitters: dict[int, ThinkSplitter] = field(default_factory=dict)

    def rewrite(self, data: dict[str, Any]) -> None:
        _clean_usage(data.get("usage"))
        for _, message in self._messages(data, "message"):
            if self.target.spec.reasoning and isinstance(message.get("content"), str):
                message["reasoning_content"], message["content"] = split(message["content"])

    def chunk(self, data: dict[str, Any]) -> dict[str, Any] | None:
        if "error" in data:
            return {"error": _envelope(data["error"], self.target)}
        self.id = self.id or data.get("id")
        if data.get("usage"):
            self.usage = _clean_usage(data["usage"])
            if not data.get("choices") and not self.client_wants_usage:
                return None
        elif self.client_wants_usage:
            data["usage"] = None
        for choice, delta in self._messages(data, "delta"):
            if self.target.spec.reasoning:
                self._split(choice, delta)
        return data

    def _messages(self, data: dict[str, Any], key: str) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """Give ``data`` the caller's model and drop vLLM's null extras; yield each choice with its ``key``
        (``message`` or a stream's ``delta``), cleaned too."""
        data["model"] = self.target.model
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


def _check(endpoint: Endpoint, body: dict[str, Any]) -> None:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("You must provide a model parameter.", param="model", code="missing_required_parameter")
    if endpoint == "chat.completions":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("'messages' must be a non-empty array of messages.", param="messages",
                                 code="invalid_value")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise InvalidRequest(f"messages[{i}] must be an object with a 'role'.", param=f"messages[{i}]",
                                     code="invalid_value")
    elif "prompt" not in body:
        raise InvalidRequest("You must provide a prompt parameter.", param="prompt", code="missing_required_parameter")
    if "stream" in body and not isinstance(body["stream"], bool | None):
        raise InvalidRequest("'stream' must be a boolean.", param="stream", code="invalid_type")


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
    return {"message": message, "type": "server_error" if code == 500 else "invalid_request_error",
            "param": error.get("param"), "code": code if isinstance(code, str) else None}


def _translate(status: int, error: dict[str, Any], target: Target) -> TunegateError:
    message = str(error.get("message", "")).replace(target.engine_model, target.model)
    param = error.get("param") if isinstance(error.get("param"), str) else None
    if status == 404:
        return NotFound(f"The model '{target.model}' does not exist or you do not have access to it.", param="model",
                        code="model_not_found")
    if status in (400, 422):
        return InvalidRequest(message or "The engine rejected the request.", param=param, code="invalid_request")
    if status == 503:
        return Unavailable(f"The engine for '{target.base_model}' is overloaded or restarting: {message}",
                           code="engine_unavailable")
    return UpstreamFailed(f"The engine failed: {message or status}", code="engine_error")
