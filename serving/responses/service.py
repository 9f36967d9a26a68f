"""The Responses API (``/v1/responses``) translated onto chat completions, through the same proxy as chat.

Why translate rather than forward to vLLM's own ``/v1/responses``: every model tunegate serves must answer it —
base, ``ft:`` and checkpoint adapters, and GGUF models on llama.cpp's server, which has no Responses endpoint —
and the chat path already has what a forwarded body needs (the ``serving.request_body`` allow-list, adapter
resolution and hot-load, ``<think>`` splitting, usage, the stream relay that aborts the engine's request when
the client leaves). vLLM's own endpoint also changes shape between versions. So a Responses request becomes a
chat body (``to_chat``: instructions → a system message, items → messages, function tools and ``tool_choice``,
``text.format`` → ``response_format`` for structured outputs, ``max_output_tokens`` → ``max_tokens``), which is
then checked by the allow-list like a caller's chat body, and the answer becomes a Response (``from_chat``) or,
streamed, the Responses event sequence (``EventStream``).

``ResponsesService`` adds what chat has not: storing (per organization; ``store`` defaults to true),
``previous_response_id`` chains, background responses (an asyncio task; ``cancel``), ``input_items`` and
``input_tokens``. It does not import the gateway: a batch worker can call ``create`` too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import msgspec

from serving import request_body
from serving.proxy import Completions
from storage.accounts import Principal
from storage.errors import InvalidRequest, NotFound, TunegateError
from storage.ids import new_id, now
from storage.responses import ACTIVE, MAX_CONVERSATION_BYTES, ResponseStore

log = logging.getLogger("tunegate.serving")
_encode = msgspec.json.Encoder().encode
POLL_S = 2.0  # a background response renews its lease and looks for a cancel from elsewhere this often
LEASE_S = 30.0  # … and is failed ("the gateway restarted") when nobody renewed it for this long
_decode = msgspec.json.Decoder().decode

# Accepted and not acted on (nothing the engine does depends on them) / refused as not implemented here.
IGNORED = {
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "service_tier",
    "include",
    "max_tool_calls",
    "stream_options",
    "truncation",
    "prompt_cache_options",
}
UNSUPPORTED = {"conversation", "prompt", "context_management", "moderation"}
KNOWN = {
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "text",
    "max_output_tokens",
    "temperature",
    "top_p",
    "top_logprobs",
    "reasoning",
    "metadata",
    "store",
    "stream",
    "background",
    "previous_response_id",
}
# chat parameter names (as the allow-list names them in its 400s) → the Responses request's names
_PARAM_NAMES = (
    ("max_tokens", "max_output_tokens"),
    ("response_format.json_schema", "text.format"),
    ("response_format", "text.format"),
    ("messages", "input"),
)


def _bad(message: str, param: str | None, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


# --- the request ------------------------------------------------------------------------------------------------
@dataclass
class ResponsesRequest:
    """A checked Responses request: ``input`` normalized to stored-item shape (each with an ``id``)."""

    model: str
    input: list[dict[str, Any]]
    instructions: str | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: str | dict[str, Any] = "auto"
    parallel_tool_calls: bool = True
    text_format: dict[str, Any] = field(default_factory=lambda: {"type": "text"})
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_logprobs: int | None = None
    reasoning: dict[str, Any] | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    store: bool = True
    stream: bool = False
    background: bool = False
    previous_response_id: str | None = None
    truncation: str = "disabled"
    user: str | None = None


def parse(body: Any, *, need_input: bool = True) -> ResponsesRequest:
    """A caller's body checked field by field; the first problem is a 400 naming it."""
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.", None)
    for key in body:
        if key in UNSUPPORTED:
            raise _bad(f"'{key}' is not supported by this server.", key, "unsupported_parameter")
        if key not in KNOWN and key not in IGNORED:
            raise _bad(f"Unknown parameter: '{key}'.", key, "unknown_parameter")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("You must provide a model parameter.", "model", "missing_required_parameter")
    raw = body.get("input")
    if raw is None and need_input and not body.get("previous_response_id"):
        raise _bad("You must provide an input parameter.", "input", "missing_required_parameter")
    req = ResponsesRequest(model=model, input=_items(raw) if raw is not None else [])
    req.instructions = _opt(body, "instructions", str)
    req.tools = [_tool(t, f"tools[{i}]") for i, t in enumerate(_opt(body, "tools", list) or [])]
    req.tool_choice = _tool_choice(body.get("tool_choice"), req.tools)
    req.parallel_tool_calls = _opt(body, "parallel_tool_calls", bool, True)
    req.text_format = _text(body.get("text"))
    req.max_output_tokens = _opt(body, "max_output_tokens", int)
    req.temperature = _opt(body, "temperature", (int, float))
    req.top_p = _opt(body, "top_p", (int, float))
    req.top_logprobs = _opt(body, "top_logprobs", int)
    req.reasoning = _reasoning(body.get("reasoning"))
    req.metadata = _metadata(body.get("metadata"))
    req.store = _opt(body, "store", bool, True)
    req.stream = _opt(body, "stream", bool, False)
    req.background = _opt(body, "background", bool, False)
    req.previous_response_id = _opt(body, "previous_response_id", str)
    req.truncation = _opt(body, "truncation", str, "disabled")
    if req.truncation not in ("auto", "disabled"):
        raise _bad("'truncation' must be auto or disabled.", "truncation")
    req.user = _opt(body, "user", str)
    if req.background and not req.store:
        raise _bad("background=true requires store=true.", "background")
    if req.background and req.stream:
        raise _bad(
            "Streaming a background response is not supported by this server; poll it with retrieve.",
            "stream",
            "unsupported_parameter",
        )
    return req


def _opt(body: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, (int, float))):
        names = {str: "a string", bool: "a boolean", int: "an integer", list: "an array", (int, float): "a number"}
        raise _bad(f"'{key}' must be {names.get(kind, 'valid')}.", key, "invalid_type")
    return value


def _items(raw: Any) -> list[dict[str, Any]]:
    if isinstance(raw, str):
        return [
            {
                "id": new_id("msg_"),
                "type": "message",
                "role": "user",
                "status": "completed",
                "content": [{"type": "input_text", "text": raw}],
            }
        ]
    if not isinstance(raw, list):
        raise _bad("'input' must be a string or an array of input items.", "input", "invalid_type")
    return [_item(item, f"input[{i}]") for i, item in enumerate(raw)]


def _item(item: Any, param: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise _bad(f"'{param}' must be an object.", param, "invalid_type")
    kind = item.get("type", "message" if "role" in item else None)
    if kind == "message":
        return _message_item(item, param)
    if kind == "function_call":
        call_id, name, arguments = (_field(item, k, param) for k in ("call_id", "name", "arguments"))
        return {
            "id": _item_id(item, "fc_"),
            "type": "function_call",
            "call_id": call_id,
            "name": name,
            "arguments": arguments,
            "status": "completed",
        }
    if kind == "function_call_output":
        output = item.get("output")
        if isinstance(output, list):  # input_text parts
            output = "".join(p.get("text", "") for p in output if isinstance(p, dict))
        if not isinstance(output, str):
            raise _bad(f"'{param}.output' must be a string.", f"{param}.output", "invalid_type")
        return {
            "id": _item_id(item, "fco_"),
            "type": "function_call_output",
            "call_id": _field(item, "call_id", param),
            "output": output,
            "status": "completed",
        }
    if kind == "reasoning":  # a previous turn's reasoning sent back: kept with the input, not shown to the model
        return _reasoning_item(item, param)
    raise _bad(
        f"Input items of type {kind!r} are not supported by this server (message, function_call, "
        "function_call_output, reasoning are).",
        f"{param}.type",
        "unsupported_parameter",
    )


MAX_REASONING_PARTS = 64
MAX_REASONING_CHARS = 256 * 1024  # all the text of one reasoning item sent back


def _reasoning_item(item: dict[str, Any], param: str) -> dict[str, Any]:
    """A reasoning item (``ReasoningItem``): ``summary`` of ``summary_text`` parts, optional ``content`` of
    ``reasoning_text`` parts, bounded in parts and characters (it is stored and loaded again with every response
    of the chain, but never reaches the model); ``encrypted_content`` is not kept (nothing here can read it)."""
    out: dict[str, Any] = {"id": _item_id(item, "rs_"), "type": "reasoning"}
    total = 0
    for key, kind in (("summary", "summary_text"), ("content", "reasoning_text")):
        parts = item.get(key)
        if parts is None and key == "content":
            continue
        if not isinstance(parts, list):
            raise _bad(
                f"'{param}.{key}' must be an array of {kind} parts.",
                f"{param}.{key}",
                "missing_required_parameter" if parts is None else "invalid_type",
            )
        if len(parts) > MAX_REASONING_PARTS:
            raise _bad(f"'{param}.{key}' has more than {MAX_REASONING_PARTS} parts.", f"{param}.{key}")
        for j, part in enumerate(parts):
            if (
                not isinstance(part, dict)
                or part.get("type") != kind
                or not isinstance(part.get("text"), str)
                or set(part) - {"type", "text"}
            ):
                raise _bad(
                    f'\'{param}.{key}[{j}]\' must be {{"type": "{kind}", "text": string}}.',
                    f"{param}.{key}[{j}]",
                    "invalid_type",
                )
            total += len(part["text"])
        if total > MAX_REASONING_CHARS:
            raise _bad(f"'{param}' holds more than {MAX_REASONING_CHARS} characters of reasoning.", f"{param}.{key}")
        out[key] = [{"type": kind, "text": p["text"]} for p in parts]
    return out


def _field(item: dict[str, Any], key: str, param: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise _bad(
            f"'{param}.{key}' must be a string.",
            f"{param}.{key}",
            "missing_required_parameter" if value is None else "invalid_type",
        )
    return value


def _item_id(item: dict[str, Any], prefix: str) -> str:
    given = item.get("id")
    return given if isinstance(given, str) and 0 < len(given) <= 64 else new_id(prefix)


_INPUT_PARTS = {"input_text", "output_text", "input_image", "refusal", "summary_text"}


def _message_item(item: dict[str, Any], param: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in ("user", "system", "developer", "assistant"):
        raise _bad(f"'{param}.role' must be one of user, system, developer, assistant.", f"{param}.role")
    content = item.get("content")
    text_type = "output_text" if role == "assistant" else "input_text"
    parts: list[dict[str, Any]]
    if isinstance(content, str):
        parts = [{"type": text_type, "text": content}]
    elif isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            where = f"{param}.content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in _INPUT_PARTS:
                raise _bad(
                    f"'{where}.type' must be one of input_text, output_text, input_image, refusal.", f"{where}.type"
                )
            if kind == "input_image":
                if not isinstance(part.get("image_url"), str):
                    raise _bad(
                        f"'{where}.image_url' must be a string (a URL or a data URL).",
                        f"{where}.image_url",
                        "invalid_type",
                    )
                detail = part.get("detail") or "auto"
                if detail not in ("auto", "low", "high"):
                    raise _bad(f"'{where}.detail' must be auto, low or high.", f"{where}.detail")
                parts.append({"type": "input_image", "image_url": part["image_url"], "detail": detail})
                continue
            key = "refusal" if kind == "refusal" else "text"
            if not isinstance(part.get(key), str):
                raise _bad(f"'{where}.{key}' must be a string.", f"{where}.{key}", "invalid_type")
            parts.append({"type": kind, key: part[key]})
    else:
        raise _bad(
            f"'{param}.content' must be a string or an array of content parts.", f"{param}.content", "invalid_type"
        )
    if role == "assistant":  # an output message (OutputMessage): output_text parts carry annotations
        parts = [
            {"type": "output_text", "text": p.get("text", ""), "annotations": [], "logprobs": []}
            if p["type"] in ("output_text", "input_text")
            else p
            for p in parts
        ]
    return {"id": _item_id(item, "msg_"), "type": "message", "role": role, "status": "completed", "content": parts}


def _tool(tool: Any, param: str) -> dict[str, Any]:
    if not isinstance(tool, dict):
        raise _bad(f"'{param}' must be an object.", param, "invalid_type")
    if tool.get("type") != "function":
        raise _bad(
            f"Tools of type {tool.get('type')!r} are not supported by this server: only function tools.",
            f"{param}.type",
            "unsupported_parameter",
        )
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise _bad(f"'{param}.name' must be a non-empty string.", f"{param}.name", "missing_required_parameter")
    for key, kind in (("description", str), ("parameters", dict), ("strict", bool)):
        if tool.get(key) is not None and not isinstance(tool[key], kind):
            raise _bad(f"'{param}.{key}' has the wrong type.", f"{param}.{key}", "invalid_type")
    return {
        "type": "function",
        "name": name,
        "description": tool.get("description"),
        "parameters": tool.get("parameters"),
        "strict": tool.get("strict"),
    }


def _tool_choice(value: Any, tools: list[dict[str, Any]]) -> str | dict[str, Any]:
    if value is None:
        return "auto"
    if value in ("none", "auto", "required"):
        return value
    if isinstance(value, dict) and value.get("type") == "function" and isinstance(value.get("name"), str):
        if value["name"] not in {t["name"] for t in tools}:
            raise _bad(f"tool_choice names '{value['name']}', which is not one of the tools.", "tool_choice")
        return {"type": "function", "name": value["name"]}
    raise _bad('\'tool_choice\' must be none, auto, required or {"type": "function", "name": ...}.', "tool_choice")


def _text(value: Any) -> dict[str, Any]:
    if value is None:
        return {"type": "text"}
    if not isinstance(value, dict):
        raise _bad("'text' must be an object.", "text", "invalid_type")
    fmt = value.get("format")
    if fmt is None:
        return {"type": "text"}
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind in ("text", "json_object"):
        return {"type": kind}
    if kind != "json_schema":
        raise _bad("'text.format.type' must be text, json_object or json_schema.", "text.format.type")
    if not isinstance(fmt.get("name"), str) or not isinstance(fmt.get("schema"), dict):
        which = "name" if not isinstance(fmt.get("name"), str) else "schema"
        raise _bad(
            f"'text.format.{which}' is required for json_schema.", f"text.format.{which}", "missing_required_parameter"
        )
    out = {"type": "json_schema", "name": fmt["name"], "schema": fmt["schema"], "strict": bool(fmt.get("strict"))}
    if isinstance(fmt.get("description"), str):
        out["description"] = fmt["description"]
    return out


def _reasoning(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _bad("'reasoning' must be an object.", "reasoning", "invalid_type")
    effort, summary = value.get("effort"), value.get("summary") or value.get("generate_summary")
    if effort is not None and effort not in ("none", "minimal", "low", "medium", "high", "xhigh"):
        raise _bad("'reasoning.effort' must be one of none, minimal, low, medium, high, xhigh.", "reasoning.effort")
    if summary is not None and summary not in ("auto", "concise", "detailed"):
        raise _bad("'reasoning.summary' must be one of auto, concise, detailed.", "reasoning.summary")
    return {"effort": effort, "summary": summary}


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > 16:
        raise _bad("'metadata' must be an object of at most 16 string pairs.", "metadata", "invalid_type")
    for key, item in value.items():
        if not isinstance(item, str) or len(key) > 64 or len(item) > 512:
            raise _bad(
                f"metadata['{key}']: keys are strings of at most 64 characters, values at most 512.", f"metadata.{key}"
            )
    return dict(value)


# --- Responses → chat -------------------------------------------------------------------------------------------
def to_chat(req: ResponsesRequest, history: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat completions body for ``req`` continued from ``history`` (the previous responses' items)."""
    return _to_chat(req, history)[0]


def _to_chat(req: ResponsesRequest, history: list[dict[str, Any]]) -> tuple[dict[str, Any], list[list[str]]]:
    """``to_chat``, and where each chat message came from (``origins[k]``: the Responses param of message k, then
    of each of its tool calls): ``instructions``, ``previous_response_id`` (history) or ``input[i]``."""
    messages: list[dict[str, Any]] = []
    origins: list[list[str]] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
        origins.append(["instructions"])
    sources = [("previous_response_id", item) for item in history] + [
        (f"input[{i}]", item) for i, item in enumerate(req.input)
    ]
    for origin, item in sources:
        kind = item.get("type")
        if kind == "message":
            messages.append(_chat_message(item))
            origins.append([origin])
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)  # parallel calls: one assistant turn
                origins[-1].append(origin)
            elif last is not None and last["role"] == "assistant" and not last.get("_closed"):
                last["tool_calls"] = [call]
                origins[-1].append(origin)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
                origins.append([origin, origin])
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
            origins.append([origin + _OUTPUT])
        # reasoning items are not shown to the model again (as DeepSeek's and Qwen's templates drop them)
    for message in messages:
        message.pop("_closed", None)
    body: dict[str, Any] = {"model": req.model, "messages": messages}
    if req.max_output_tokens is not None:
        body["max_tokens"] = req.max_output_tokens
    for key in ("temperature", "top_p"):
        if getattr(req, key) is not None:
            body[key] = getattr(req, key)
    if req.top_logprobs:
        body["logprobs"], body["top_logprobs"] = True, req.top_logprobs
    if req.tools:
        body["tools"] = [
            {"type": "function", "function": {k: v for k, v in t.items() if k != "type" and v is not None}}
            for t in req.tools
        ]
        choice = req.tool_choice
        body["tool_choice"] = (
            {"type": "function", "function": {"name": choice["name"]}} if isinstance(choice, dict) else choice
        )
        body["parallel_tool_calls"] = req.parallel_tool_calls
    fmt = req.text_format
    if fmt["type"] == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif fmt["type"] == "json_schema":
        body["response_format"] = {"type": "json_schema", "json_schema": {k: v for k, v in fmt.items() if k != "type"}}
    if req.reasoning and req.reasoning.get("effort"):
        body["reasoning_effort"] = req.reasoning["effort"]
    return body, origins


def _chat_message(item: dict[str, Any]) -> dict[str, Any]:
    parts = item["content"]
    if all(p["type"] in ("input_text", "output_text", "summary_text") for p in parts):
        content: Any = "".join(p["text"] for p in parts)
    else:
        content = [
            {"type": "image_url", "image_url": {"url": p["image_url"], "detail": p.get("detail", "auto")}}
            if p["type"] == "input_image"
            else {"type": "refusal", "refusal": p["refusal"]}
            if p["type"] == "refusal"
            else {"type": "text", "text": p["text"]}
            for p in parts
        ]
    return {"role": item["role"], "content": content, "_closed": item["role"] != "assistant"}


def chat_request(req: ResponsesRequest, history: list[dict[str, Any]], limits: Any) -> dict[str, Any]:
    """``to_chat``, checked by the allow-list now, so that a problem is a 400 naming the Responses field."""
    body, origins = _to_chat(req, history)
    try:
        request_body.parse("chat.completions", body, limits)
    except InvalidRequest as exc:
        raise _renamed(exc, origins) from None
    return body


_OUTPUT = "#output"  # origins: the message is a function_call_output item
_MESSAGE_PARAM = re.compile(r"^messages\[(\d+)\](.*)$")
_CALL_PARAM = re.compile(r"^\.tool_calls\[(\d+)\](.*)$")
# the rest of a chat message's param → the Responses item's (first match wins)
_ITEM_FIELDS = (
    (re.compile(r"^(\.content\[\d+\])\.image_url\.detail"), r"\1.detail"),
    (re.compile(r"^(\.content\[\d+\])\.image_url\.url"), r"\1.image_url"),
    (re.compile(r"^\.tool_call_id"), ".call_id"),
    (re.compile(r"^\.function\."), "."),
    (re.compile(r"^\.id$"), ".call_id"),
)


def _item_param(param: str, origins: list[list[str]]) -> str | None:
    """``messages[k]…`` (a chat param) as the Responses param of the item it came from, or None."""
    matched = _MESSAGE_PARAM.match(param)
    if matched is None or int(matched[1]) >= len(origins):
        return None
    where, rest = origins[int(matched[1])], matched[2]
    call = _CALL_PARAM.match(rest)
    if call is not None and int(call[1]) + 1 < len(where):
        origin, rest = where[int(call[1]) + 1], call[2]
    else:
        origin = where[0]
    output, origin = origin.endswith(_OUTPUT), origin.removesuffix(_OUTPUT)
    if origin in ("instructions", "previous_response_id"):
        return origin
    if output and rest.startswith(".content"):  # a function_call_output item: its chat content is its output
        rest = ".output" + rest[len(".content") :]
    for pattern, replacement in _ITEM_FIELDS:
        if pattern.match(rest):
            rest = pattern.sub(replacement, rest, count=1)
            break
    return origin + rest


def _renamed(exc: TunegateError, origins: list[list[str]] | None = None) -> TunegateError:
    param = exc.param or ""
    item = _item_param(param, origins) if origins is not None else None
    if item is not None:
        exc.message, exc.param = exc.message.replace(param, item), item
        return exc
    for chat, responses in _PARAM_NAMES:
        if param == chat or param.startswith(chat + ".") or param.startswith(chat + "["):
            new = responses + param[len(chat) :]
            exc.message, exc.param = exc.message.replace(chat, responses), new
            break
    if param.startswith("tools[") and ".function." in param:
        exc.param = param.replace(".function.", ".")
        exc.message = exc.message.replace(".function.", ".")
    return exc


# --- chat → Responses -------------------------------------------------------------------------------------------
def skeleton(req: ResponsesRequest, response_id: str, created_at: int, status: str) -> dict[str, Any]:
    """The Response object before any output: what ``response.created`` and a queued background response show."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": req.background,
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "max_tool_calls": None,
        "model": req.model,
        "output": [],
        "parallel_tool_calls": req.parallel_tool_calls,
        "previous_response_id": req.previous_response_id,
        "reasoning": req.reasoning or {"effort": None, "summary": None},
        "service_tier": "default",
        "store": req.store,
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "text": {"format": req.text_format, "verbosity": "medium"},
        "tool_choice": req.tool_choice,
        "tools": req.tools,
        "top_logprobs": req.top_logprobs or 0,
        "top_p": 1.0 if req.top_p is None else req.top_p,
        "truncation": req.truncation,
        "metadata": req.metadata,
        **({"user": req.user} if req.user is not None else {}),
    }


def usage_of(chat_usage: Any) -> dict[str, Any] | None:
    if not isinstance(chat_usage, dict):
        return None
    prompt, completion = int(chat_usage.get("prompt_tokens") or 0), int(chat_usage.get("completion_tokens") or 0)
    cached = (chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def _logprobs(chat_logprobs: Any) -> list[dict[str, Any]]:
    content = chat_logprobs.get("content") if isinstance(chat_logprobs, dict) else None
    return [
        {
            "token": t["token"],
            "logprob": t["logprob"],
            "bytes": t.get("bytes") or [],
            "top_logprobs": [
                {"token": x["token"], "logprob": x["logprob"], "bytes": x.get("bytes") or []}
                for x in t.get("top_logprobs") or []
            ],
        }
        for t in content or []
    ]


def message_item(item_id: str, text: str, status: str, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}],
    }


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def reasoning_item(item_id: str, text: str, summarize: bool) -> dict[str, Any]:
    """The model's thought, as open-weight models give it: the text itself (``content``), and as the summary too
    when one was asked for (tunegate does not summarize it)."""
    return {
        "id": item_id,
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": text}] if summarize else [],
        "content": [{"type": "reasoning_text", "text": text}],
    }


def finish(response: dict[str, Any], finish_reason: str | None, usage: Any) -> dict[str, Any]:
    """Status, completion time and usage of a generated response."""
    if finish_reason == "length":
        response["status"], response["incomplete_details"] = "incomplete", {"reason": "max_output_tokens"}
    else:
        response["status"] = "completed"
    response["completed_at"] = now()
    if (counted := usage_of(usage)) is not None:
        response["usage"] = counted
    return response


def from_chat(req: ResponsesRequest, chat: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    """A chat completion's first choice as the Response's output (``response``: its skeleton)."""
    choice = (chat.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    if message.get("reasoning_content"):
        output.append(
            reasoning_item(
                new_id("rs_"), message["reasoning_content"], bool(req.reasoning and req.reasoning.get("summary"))
            )
        )
    if message.get("content") or not message.get("tool_calls"):
        status = "incomplete" if choice.get("finish_reason") == "length" else "completed"
        output.append(
            message_item(new_id("msg_"), message.get("content") or "", status, _logprobs(choice.get("logprobs")))
        )
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        output.append(
            call_item(
                new_id("fc_"),
                call.get("id") or new_id("call_"),
                function.get("name", ""),
                function.get("arguments") or "{}",
                "completed",
            )
        )
    response["output"] = output
    return finish(response, choice.get("finish_reason"), chat.get("usage"))


# --- streaming ----------------------------------------------------------------------------------------------------
class EventStream:
    """Chat completion chunks in, Responses events out (``event: <type>`` + ``data: <json>``, numbered)."""

    def __init__(self, req: ResponsesRequest, response: dict[str, Any]) -> None:
        self.req, self.response = req, response
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self.open: dict[str, int] = {}  # "reasoning" | "message" | "call:<index>" → output index
        self.texts: dict[int, str] = {}  # output index → text so far
        self.logprobs: dict[int, list[dict[str, Any]]] = {}
        self.finish_reason: str | None = None
        self.usage: Any = None

    def event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + _encode(data) + b"\n\n"

    def start(self) -> list[bytes]:
        return [
            self.event("response.created", response=self.response),
            self.event("response.in_progress", response=self.response),
        ]

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                out += self._reasoning(delta["reasoning_content"])
            if delta.get("content"):
                out += self._text(delta["content"], _logprobs(choice.get("logprobs")))
            for call in delta.get("tool_calls") or []:
                out += self._call(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return out

    def _add(self, key: str, item: dict[str, Any]) -> tuple[int, list[bytes]]:
        index = len(self.output)
        self.output.append(item)
        self.open[key] = index
        return index, [self.event("response.output_item.added", output_index=index, item=item)]

    def _reasoning(self, text: str) -> list[bytes]:
        out: list[bytes] = []
        summarize = bool(self.req.reasoning and self.req.reasoning.get("summary"))
        if "reasoning" not in self.open:
            index, out = self._add("reasoning", {"id": new_id("rs_"), "type": "reasoning", "summary": []})
            self.texts[index] = ""
            if summarize:
                out.append(
                    self.event(
                        "response.reasoning_summary_part.added",
                        item_id=self.output[index]["id"],
                        output_index=index,
                        summary_index=0,
                        part={"type": "summary_text", "text": ""},
                    )
                )
        index = self.open["reasoning"]
        self.texts[index] += text
        item_id = self.output[index]["id"]
        out.append(
            self.event(
                "response.reasoning_text.delta", item_id=item_id, output_index=index, content_index=0, delta=text
            )
        )
        if summarize:
            out.append(
                self.event(
                    "response.reasoning_summary_text.delta",
                    item_id=item_id,
                    output_index=index,
                    summary_index=0,
                    delta=text,
                )
            )
        return out

    def _text(self, text: str, logprobs: list[dict[str, Any]]) -> list[bytes]:
        out = self._close("reasoning")
        if "message" not in self.open:
            index, added = self._add(
                "message",
                {"id": new_id("msg_"), "type": "message", "role": "assistant", "status": "in_progress", "content": []},
            )
            out += added
            self.texts[index], self.logprobs[index] = "", []
            out.append(
                self.event(
                    "response.content_part.added",
                    item_id=self.output[index]["id"],
                    output_index=index,
                    content_index=0,
                    part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
                )
            )
        index = self.open["message"]
        self.texts[index] += text
        self.logprobs[index] += logprobs
        out.append(
            self.event(
                "response.output_text.delta",
                item_id=self.output[index]["id"],
                output_index=index,
                content_index=0,
                delta=text,
                logprobs=logprobs,
            )
        )
        return out

    def _call(self, call: dict[str, Any]) -> list[bytes]:
        key = f"call:{call.get('index', 0)}"
        function = call.get("function") or {}
        out: list[bytes] = []
        if key not in self.open:
            out += self._close("reasoning") + self._close("message")
            for other in [k for k in self.open if k.startswith("call:")]:
                out += self._close(other)
            index, added = self._add(
                key,
                call_item(
                    new_id("fc_"), call.get("id") or new_id("call_"), function.get("name") or "", "", "in_progress"
                ),
            )
            out += added
            self.texts[index] = ""
        index = self.open[key]
        item = self.output[index]
        if function.get("name") and not item["name"]:
            item["name"] = function["name"]
        if function.get("arguments"):
            self.texts[index] += function["arguments"]
            out.append(
                self.event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=index,
                    delta=function["arguments"],
                )
            )
        return out

    def _close(self, key: str) -> list[bytes]:
        index = self.open.pop(key, None)
        if index is None:
            return []
        item, text = self.output[index], self.texts[index]
        out: list[bytes] = []
        if item["type"] == "reasoning":
            summarize = bool(self.req.reasoning and self.req.reasoning.get("summary"))
            out.append(
                self.event(
                    "response.reasoning_text.done", item_id=item["id"], output_index=index, content_index=0, text=text
                )
            )
            if summarize:
                out.append(
                    self.event(
                        "response.reasoning_summary_text.done",
                        item_id=item["id"],
                        output_index=index,
                        summary_index=0,
                        text=text,
                    )
                )
                out.append(
                    self.event(
                        "response.reasoning_summary_part.done",
                        item_id=item["id"],
                        output_index=index,
                        summary_index=0,
                        part={"type": "summary_text", "text": text},
                    )
                )
            item = self.output[index] = reasoning_item(item["id"], text, summarize)
        elif item["type"] == "message":
            status = "incomplete" if self.finish_reason == "length" else "completed"
            logprobs = self.logprobs[index]
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}
            out.append(
                self.event(
                    "response.output_text.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    text=text,
                    logprobs=logprobs,
                )
            )
            out.append(
                self.event(
                    "response.content_part.done", item_id=item["id"], output_index=index, content_index=0, part=part
                )
            )
            item = self.output[index] = message_item(item["id"], text, status, logprobs)
        else:
            arguments = text or "{}"
            out.append(
                self.event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=item["name"],
                    arguments=arguments,
                )
            )
            item = self.output[index] = {**item, "arguments": arguments, "status": "completed"}
        out.append(self.event("response.output_item.done", output_index=index, item=item))
        return out

    def end(self) -> tuple[dict[str, Any], list[bytes]]:
        """Close what is open; the final Response and its last events (``response.completed`` or ``incomplete``)."""
        out: list[bytes] = []
        if not self.output:  # nothing generated: still one (empty) message, as a non-streamed answer has
            out += self._text_open_empty()
        for key in sorted(self.open, key=self.open.__getitem__):
            out += self._close(key)
        response = finish({**self.response, "output": self.output}, self.finish_reason, self.usage)
        kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        out.append(self.event(kind, response=response))
        return response, out

    def _text_open_empty(self) -> list[bytes]:
        out = self._text("", [])
        return out[:-1]  # the opening events, without an empty delta

    def failed(self, error: dict[str, Any]) -> list[bytes]:
        message = str(error.get("message") or "The engine failed.")
        code = error.get("code") if isinstance(error.get("code"), str) else None
        response = {
            **self.response,
            "output": self.output,
            "status": "failed",
            "error": {"code": "server_error", "message": message},
        }
        return [
            self.event("error", code=code, message=message, param=error.get("param")),
            self.event("response.failed", response=response),
        ]


# --- the service ------------------------------------------------------------------------------------------------------
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
