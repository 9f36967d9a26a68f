"""OpenAI fine-tuning examples: supervised chat, DPO preference, reinforcement prompts. The normalized form of
every format.

The checks and their categories follow OpenAI's data-format checker (data_type, missing_messages_list,
message_missing_key, message_unrecognized_key, unrecognized_role, missing_content,
example_missing_assistant_message) plus invalid_weight / invalid_content / invalid_tools / invalid_tool_calls.
"""

from __future__ import annotations

from typing import Any

from finetune.formats.problems import ExampleErrors

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
MISSING_ANSWER = "Example has no assistant message to train on (weight 0 excluded)."
MESSAGE_KEYS = {"role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call", "refusal"}


def check_chat(example: Any, err: ExampleErrors) -> None:
    """Supervised example: ``{"messages": [...], "tools"?: [...], "parallel_tool_calls"?: bool}``."""
    if not isinstance(example, dict):
        err("data_type", f"Each example must be a JSON object, got {_kind(example)}.")
        return
    messages = example.get("messages")
    if not isinstance(messages, list) or not messages:
        err("missing_messages_list", "Example has no 'messages' list (or it is empty).")
        return
    check_messages(messages, err)
    if not any(isinstance(m, dict) and m.get("role") == "assistant" and m.get("weight", 1) != 0 for m in messages):
        err("example_missing_assistant_message", MISSING_ANSWER)
    check_tools(example.get("tools"), err)


def is_prompt(example: Any) -> bool:
    """A reinforcement (RFT) example: ``messages`` with no assistant turn, ending with a user turn; the line's
    other fields are the grader's ``item``. (A supervised file's example that lacks its answer looks the same:
    ``formats.normalize`` decides by the file.)"""
    messages = example.get("messages") if isinstance(example, dict) else None
    return (
        isinstance(messages, list)
        and bool(messages)
        and all(isinstance(m, dict) for m in messages)
        and messages[-1].get("role") == "user"
        and not any(m.get("role") == "assistant" for m in messages)
    )


def check_prompt(example: Any, err: ExampleErrors) -> None:
    """Reinforcement example: ``{"messages": [..., {"role": "user", ...}], "tools"?: [...], <item fields>}``."""
    check_messages(example["messages"], err)
    check_tools(example.get("tools"), err)


def check_messages(messages: list[Any], err: ExampleErrors) -> None:
    for i, message in enumerate(messages, start=1):
        if not isinstance(message, dict):
            err("data_type", f"Message must be a JSON object, got {_kind(message)}.", i)
            continue
        if "role" not in message:
            err("message_missing_key", "Message has no 'role'.", i)
            continue
        role = message["role"]
        if role not in ROLES:
            err("unrecognized_role", f"Role {role!r} is not one of {', '.join(ROLES)}.", i)
        unknown = sorted(set(message) - MESSAGE_KEYS)
        if unknown:
            err("message_unrecognized_key", f"Message has unrecognized key(s): {', '.join(unknown)}.", i)
        _check_content(message, err, i)
        if "weight" in message:
            if role != "assistant":
                err("invalid_weight", "'weight' is only allowed on assistant messages.", i)
            elif message["weight"] not in (0, 1) or isinstance(message["weight"], bool):
                err("invalid_weight", f"'weight' must be 0 or 1, got {message['weight']!r}.", i)
        if "tool_calls" in message:
            _check_tool_calls(message["tool_calls"], err, i)


def _check_content(message: dict[str, Any], err: ExampleErrors, i: int) -> None:
    content = message.get("content")
    may_be_empty = message.get("role") == "assistant" and (message.get("tool_calls") or message.get("function_call"))
    if content is None:
        if not may_be_empty:
            err("missing_content", "Message has no 'content'.", i)
        return
    if isinstance(content, str):
        return
    if (
        isinstance(content, list)
        and content
        and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content)
    ):
        return
    err("invalid_content", "'content' must be a string or a list of {'type': 'text', 'text': ...} parts.", i)


def _check_tool_calls(calls: Any, err: ExampleErrors, i: int) -> None:
    if not isinstance(calls, list) or not calls:
        err("invalid_tool_calls", "'tool_calls' must be a non-empty list.", i)
        return
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(fn.get("arguments"), str):
            err("invalid_tool_calls", "Each tool call needs function.name and function.arguments (a JSON string).", i)
            return


def check_tools(tools: Any, err: ExampleErrors) -> None:
    if tools is None:
        return
    ok = isinstance(tools, list) and all(
        isinstance(t, dict)
        and t.get("type") == "function"
        and isinstance(t.get("function"), dict)
        and isinstance(t["function"].get("name"), str)
        for t in tools
    )
    if not ok:
        err("invalid_tools", "'tools' must be a list of {'type': 'function', 'function': {'name': ...}}.")


def check_preference(example: Any, err: ExampleErrors) -> None:
    """DPO example: ``{"input": {"messages": [...]}, "preferred_output": [msg], "non_preferred_output": [msg]}``."""
    if not isinstance(example, dict):
        err("data_type", f"Each example must be a JSON object, got {_kind(example)}.")
        return
    prompt = example.get("input")
    prompt = prompt if isinstance(prompt, dict) else {}
    messages = prompt.get("messages")
    if not isinstance(messages, list) or not messages:
        err("missing_messages_list", "Preference example has no 'input.messages' list (or it is empty).")
    else:
        check_messages(messages, err)
        check_tools(prompt.get("tools"), err)
    for key in ("preferred_output", "non_preferred_output"):
        output = example.get(key)
        if (
            not isinstance(output, list)
            or len(output) != 1
            or not isinstance(output[0], dict)
            or output[0].get("role") != "assistant"
            or not isinstance(output[0].get("content"), str)
        ):
            err(f"invalid_{key}", f"'{key}' must be a list with one assistant message with string content.")


def normalize_preference(example: dict[str, Any]) -> dict[str, Any]:
    """Accept the older ``*_completion`` spelling; always emit ``*_output``."""
    out = dict(example)
    for new, old in (
        ("preferred_output", "preferred_completion"),
        ("non_preferred_output", "non_preferred_completion"),
    ):
        if new not in out and old in out:
            out[new] = out.pop(old)
    return out


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__
    )
