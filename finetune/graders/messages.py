"""Messages as graders and eval prompts write them (``EvalItem`` / ``EasyInputMessage``), checked and rendered into
chat messages for an engine.

A message is ``{role, content}`` (``type: "message"`` optional); ``content`` is a string or one content item or an
array of them: ``input_text`` / ``output_text`` (``text``), ``input_image`` (``image_url``, ``detail``),
``input_audio`` (``input_audio: {data, format}``). Every string in them is a template (``templates``). Rendered:
``developer`` becomes ``system`` (chat templates of open models know no developer role), text-only content is one
string (parts joined by newlines), other content the chat API's parts.
"""

from __future__ import annotations

from typing import Any

from finetune.graders.templates import render

ROLES = ("user", "assistant", "system", "developer")
TEXT_PARTS = ("input_text", "output_text")


class MessageError(ValueError):
    def __init__(self, message: str, where: str = "") -> None:
        super().__init__(message)
        self.where = where  # a suffix of the param, e.g. "[0].content"


def templates_in(messages: Any) -> list[tuple[str, str]]:
    """(param suffix, template) of every string in ``messages``; MessageError if their shape is wrong."""
    if not isinstance(messages, list) or not messages:
        raise MessageError("must be a non-empty array of messages")
    found: list[tuple[str, str]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise MessageError(f"must be a message with a role of {', '.join(ROLES)}", f"[{i}]")
        if message.get("type", "message") != "message":
            raise MessageError("type must be 'message'", f"[{i}].type")
        content = message.get("content")
        if isinstance(content, str):
            found.append((f"[{i}].content", content))
            continue
        parts = content if isinstance(content, list) else [content]
        for j, part in enumerate(parts):
            where = f"[{i}].content" + (f"[{j}]" if isinstance(content, list) else "")
            found += [(where + suffix, text) for suffix, text in _part_templates(part, where)]
    return found


def _part_templates(part: Any, where: str) -> list[tuple[str, str]]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in TEXT_PARTS and isinstance(part.get("text"), str):
        return [(".text", part["text"])]
    if kind == "input_image" and isinstance(part.get("image_url"), str):
        return [(".image_url", part["image_url"])]
    if (
        kind == "input_audio"
        and isinstance(part.get("input_audio"), dict)
        and isinstance(part["input_audio"].get("data"), str)
    ):
        return [(".input_audio.data", part["input_audio"]["data"])]
    raise MessageError("must be a string or input_text / output_text / input_image / input_audio content", where)


def render_messages(messages: list[dict[str, Any]], namespace: dict[str, Any]) -> list[dict[str, Any]]:
    """Chat messages for an engine; TemplateError when a variable has no value for this item."""
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            rendered: str | list[dict[str, Any]] = render(content, namespace)
        else:
            parts = [_part(p, namespace) for p in (content if isinstance(content, list) else [content])]
            texts = [p["text"] for p in parts if p["type"] == "text"]
            rendered = "\n".join(texts) if len(texts) == len(parts) else parts
        role = "system" if message["role"] == "developer" else message["role"]
        out.append({"role": role, "content": rendered})
    return out


def _part(part: dict[str, Any], namespace: dict[str, Any]) -> dict[str, Any]:
    if part["type"] in TEXT_PARTS:
        return {"type": "text", "text": render(part["text"], namespace)}
    if part["type"] == "input_image":
        return {
            "type": "image_url",
            "image_url": {"url": render(part["image_url"], namespace), "detail": part.get("detail") or "auto"},
        }
    audio = part["input_audio"]
    return {
        "type": "input_audio",
        "input_audio": {"data": render(audio["data"], namespace), "format": audio.get("format") or "wav"},
    }


def flat(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Messages with string content, as an output item's ``sample.input`` records them."""

    def text(content: Any) -> str:
        if isinstance(content, str):
            return content
        return "\n".join(p.get("text", f"[{p.get('type')}]") for p in content)

    return [{"role": m["role"], "content": text(m.get("content") or "")} for m in messages]
