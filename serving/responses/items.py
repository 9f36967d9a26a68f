"""Input items of a Responses request, checked one by one and normalized to stored-item shape (each with an
``id``): messages and their content parts, ``function_call``, ``function_call_output`` and ``reasoning`` items.
A problem is a 400 naming the item's field (``input[2].content[0].type``). What the items become in a chat
body is ``serving.responses.chat``'s."""

from __future__ import annotations

from typing import Any

from storage.errors import InvalidRequest
from storage.ids import new_id


def _bad(message: str, param: str | None, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


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
