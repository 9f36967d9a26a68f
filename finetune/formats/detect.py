"""Which format an example is in, and how it becomes OpenAI JSONL."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from finetune.formats import alpaca, openai_chat, sharegpt
from finetune.formats.problems import ExampleErrors

Convert = Callable[[dict[str, Any], ExampleErrors], "dict[str, Any] | None"]


@dataclass(frozen=True)
class Format:
    name: str
    kind: str  # "supervised" | "preference" | "reinforcement": the fine-tuning method it feeds
    convert: Convert
    check: Callable[[Any, ExampleErrors], None]


def _as_is(example: dict[str, Any], err: ExampleErrors) -> dict[str, Any]:
    return example


FORMATS = {
    f.name: f
    for f in (
        Format("openai_chat", "supervised", _as_is, openai_chat.check_chat),
        Format("openai_reinforcement", "reinforcement", _as_is, openai_chat.check_prompt),
        Format(
            "openai_preference",
            "preference",
            lambda e, _: openai_chat.normalize_preference(e),
            openai_chat.check_preference,
        ),
        Format("sharegpt", "supervised", sharegpt.to_chat, openai_chat.check_chat),
        Format("sharegpt_preference", "preference", sharegpt.to_preference, openai_chat.check_preference),
        Format("alpaca", "supervised", alpaca.to_chat, openai_chat.check_chat),
        Format("alpaca_preference", "preference", alpaca.to_preference, openai_chat.check_preference),
    )
}

_PREFERENCE_KEYS = {"preferred_output", "non_preferred_output", "preferred_completion", "non_preferred_completion"}


def classify(example: Any) -> Format | None:
    """The format an example's keys say it is in; None when they name none."""
    if not isinstance(example, dict):
        return None
    if "messages" in example:
        messages = example["messages"]
        first = messages[0] if isinstance(messages, list) and messages else None
        if isinstance(first, dict) and "from" in first and "role" not in first:
            return FORMATS["sharegpt"]
        return FORMATS["openai_reinforcement" if openai_chat.is_prompt(example) else "openai_chat"]
    if "input" in example and _PREFERENCE_KEYS & set(example):
        return FORMATS["openai_preference"]
    ranked = "chosen" in example or "rejected" in example
    if "conversations" in example:
        return FORMATS["sharegpt_preference" if ranked else "sharegpt"]
    if "instruction" in example or "output" in example:
        return FORMATS["alpaca_preference" if ranked else "alpaca"]
    return None
