"""LLaMA-Factory sharegpt: ``conversations`` of ``{from, value}``, optional ``system`` and ``tools``;
the preference variant adds ``chosen`` / ``rejected`` turns.

Roles: human→user, gpt→assistant, system→system, function_call→assistant ``tool_calls`` (the value is
``{"name", "arguments"}`` JSON or a list of them), observation→tool (answering the pending calls in order).
"""

from __future__ import annotations

import json
from typing import Any

from finetune.formats.problems import ExampleErrors

ROLE_OF = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "observation": "tool",
    "tool": "tool",
    "function_call": "assistant",
}


def to_messages(turns: Any, err: ExampleErrors) -> list[dict[str, Any]] | None:
    if not isinstance(turns, list) or not turns:
        err("missing_messages_list", "'conversations' must be a non-empty list of {from, value} turns.")
        return None
    messages: list[dict[str, Any]] = []
    pending: list[str] = []  # tool call ids awaiting an observation
    n_calls = 0
    for i, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict):
            err("data_type", "Each turn must be a JSON object with 'from' and 'value'.", i)
            return None
        if "from" not in turn:
            err("message_missing_key", "Turn has no 'from'.", i)
            return None
        source, value = turn["from"], turn.get("value")
        if source not in ROLE_OF:
            err("unrecognized_role", f"'from' {source!r} is not one of {', '.join(ROLE_OF)}.", i)
            return None
        if not isinstance(value, str):
            err("missing_content", "Turn has no string 'value'.", i)
            return None
        if source == "function_call":
            calls = _tool_calls(value, n_calls, err, i)
            if calls is None:
                return None
            n_calls += len(calls)
            pending = [c["id"] for c in calls]
            messages.append({"role": "assistant", "content": None, "tool_calls": calls})
        elif ROLE_OF[source] == "tool":
            call_id = pending.pop(0) if pending else f"call_{n_calls}"
            messages.append({"role": "tool", "tool_call_id": call_id, "content": value})
        else:
            messages.append({"role": ROLE_OF[source], "content": value})
    return messages


def _tool_calls(value: str, start: int, err: ExampleErrors, i: int) -> list[dict[str, Any]] | None:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        err("invalid_tool_calls", f"function_call value is not JSON: {exc.msg}.", i)
        return None
    calls = parsed if isinstance(parsed, list) else [parsed]
    out = []
    for n, call in enumerate(calls):
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            err("invalid_tool_calls", "function_call value must be {'name': ..., 'arguments': {...}} (or a list).", i)
            return None
        arguments = call.get("arguments", {})
        out.append(
            {
                "id": f"call_{start + n}",
                "type": "function",
                "function": {
                    "name": call["name"],
                    "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False),
                },
            }
        )
    return out


def _tools(raw: Any, err: ExampleErrors) -> list[dict[str, Any]] | None:
    if raw in (None, "", []):
        return None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            err("invalid_tools", f"'tools' is not valid JSON: {exc.msg}.")
            return None
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        err("invalid_tools", "'tools' must be a list of function definitions.")
        return None
    return [t if t.get("type") == "function" and "function" in t else {"type": "function", "function": t} for t in raw]


def _with_system(example: dict[str, Any], messages: list[dict[str, Any]], err: ExampleErrors) -> list[dict[str, Any]]:
    system = example.get("system")
    if system is None or system == "":
        return messages
    if not isinstance(system, str):
        err("data_type", "'system' must be a string.")
        return messages
    return [{"role": "system", "content": system}, *messages]


def to_chat(example: dict[str, Any], err: ExampleErrors) -> dict[str, Any] | None:
    messages = to_messages(example.get("conversations", example.get("messages")), err)
    tools = _tools(example.get("tools"), err)
    if messages is None:
        return None
    out: dict[str, Any] = {"messages": _with_system(example, messages, err)}
    if tools:
        out["tools"] = tools
    return out


def to_preference(example: dict[str, Any], err: ExampleErrors) -> dict[str, Any] | None:
    messages = to_messages(example.get("conversations"), err)
    tools = _tools(example.get("tools"), err)
    outputs = []
    for key in ("chosen", "rejected"):
        turn = example.get(key)
        value = turn.get("value") if isinstance(turn, dict) else turn
        if not isinstance(value, str) or not value:
            err("missing_content", f"'{key}' must be a gpt turn {{from, value}} (or a string) with text.")
            return None
        outputs.append([{"role": "assistant", "content": value}])
    if messages is None:
        return None
    prompt: dict[str, Any] = {"messages": _with_system(example, messages, err)}
    if tools:
        prompt["tools"] = tools
    return {"input": prompt, "preferred_output": outputs[0], "non_preferred_output": outputs[1]}
