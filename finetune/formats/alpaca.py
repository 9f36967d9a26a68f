"""LLaMA-Factory alpaca: ``instruction``, ``input``, ``output``, ``system``, ``history`` (and ``chosen``/``rejected``).

The prompt is ``instruction + "\\n" + input`` (LLaMA-Factory's join), history pairs become earlier turns.
"""

from __future__ import annotations

from typing import Any

from finetune.formats.problems import ExampleErrors

KEYS = {"instruction", "input", "output", "system", "history", "chosen", "rejected", "tools"}


def prompt_messages(example: dict[str, Any], err: ExampleErrors) -> list[dict[str, Any]] | None:
    """system + history + the user turn, or None after reporting what is wrong."""
    instruction, extra = example.get("instruction", ""), example.get("input", "")
    for key, value in (("instruction", instruction), ("input", extra), ("system", example.get("system", ""))):
        if value is not None and not isinstance(value, str):
            err("data_type", f"'{key}' must be a string.")
            return None
    prompt = "\n".join(part for part in (instruction, extra) if part)
    if not prompt:
        err("missing_content", "Both 'instruction' and 'input' are empty: there is no prompt.")
        return None
    messages: list[dict[str, Any]] = []
    if example.get("system"):
        messages.append({"role": "system", "content": example["system"]})
    history = example.get("history") or []
    if not isinstance(history, list):
        err("invalid_history", "'history' must be a list of [prompt, response] pairs.")
        return None
    for turn in history:
        if not (isinstance(turn, list) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
            err("invalid_history", "Each 'history' entry must be a [prompt, response] pair of strings.")
            return None
        messages += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    messages.append({"role": "user", "content": prompt})
    return messages


def to_chat(example: dict[str, Any], err: ExampleErrors) -> dict[str, Any] | None:
    messages = prompt_messages(example, err)
    output = example.get("output")
    if not isinstance(output, str) or not output:
        err("missing_content", "'output' is missing or not a non-empty string.")
        return None
    return None if messages is None else {"messages": [*messages, {"role": "assistant", "content": output}]}


def to_preference(example: dict[str, Any], err: ExampleErrors) -> dict[str, Any] | None:
    messages = prompt_messages(example, err)
    pair = [example.get("chosen"), example.get("rejected")]
    if not all(isinstance(p, str) and p for p in pair):
        err("missing_content", "'chosen' and 'rejected' must both be non-empty strings.")
        return None
    if messages is None:
        return None
    return {
        "input": {"messages": messages},
        "preferred_output": [{"role": "assistant", "content": pair[0]}],
        "non_preferred_output": [{"role": "assistant", "content": pair[1]}],
    }
