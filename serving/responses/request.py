"""A Responses request checked field by field (``parse``) into a ``ResponsesRequest``: which fields are known,
ignored or refused, and the checks of tools, ``tool_choice``, ``text.format``, ``reasoning`` and ``metadata``
(the input items are ``serving.responses.items``'s). The first problem is a 400 naming the field; nothing here
knows chat completions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from serving.responses.items import _bad, _items

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
