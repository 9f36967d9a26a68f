"""A ``ResponsesRequest`` (and the previous responses' items) as a chat completions body (``to_chat``), checked by
the chat allow-list at once (``chat_request``), and the allow-list's 400s renamed to the Responses request's
(``messages[3].content`` → ``input[2].content``, ``max_tokens`` → ``max_output_tokens``)."""

from __future__ import annotations

import re
from typing import Any

from serving import request_body
from serving.responses.request import ResponsesRequest
from storage.errors import InvalidRequest, TunegateError

# chat parameter names (as the allow-list names them in its 400s) → the Responses request's names
_PARAM_NAMES = (
    ("max_tokens", "max_output_tokens"),
    ("response_format.json_schema", "text.format"),
    ("response_format", "text.format"),
    ("messages", "input"),
)


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
