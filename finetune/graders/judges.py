"""``score_model`` and ``label_model``: the request a judge model gets, and how its answer becomes a score.

The judge is any model tunegate serves to the organization (a base model, its own fine-tuned model or checkpoint);
the caller supplies how to reach it (``engine.Judge``). The judge answers through structured outputs (a JSON
schema): ``{"result": <number>}`` for a score, ``{"result": <one of the labels>}`` for a label; an answer that is
not such JSON is read leniently (the first number / the label it names) before it counts as a parse error.
Sampling: ``temperature`` 0 unless given (reproducible grades), ``max_completions_tokens`` (the spec's spelling)
→ ``max_tokens`` (default 128), ``seed``, ``top_p``, ``reasoning_effort`` passed on.
"""

from __future__ import annotations

import json
import re
from typing import Any

DEFAULT_MAX_TOKENS = 128
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


class ParseError(ValueError):
    pass


def request(grader: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat body (without ``model``) for one judged row."""
    params = dict(grader.get("sampling_params") or {})
    body: dict[str, Any] = {
        "messages": messages,
        "temperature": params.get("temperature", 0),
        "max_tokens": params.get("max_completions_tokens") or DEFAULT_MAX_TOKENS,
    }
    for key in ("seed", "top_p", "reasoning_effort"):
        if params.get(key) is not None:
            body[key] = params[key]
    if grader["type"] == "label_model":
        result: dict[str, Any] = {"type": "string", "enum": list(grader["labels"])}
    else:
        result = {"type": "number"}
    schema = {"type": "object", "properties": {"result": result}, "required": ["result"], "additionalProperties": False}
    body["response_format"] = {
        "type": "json_schema",
        "json_schema": {"name": grader["type"], "schema": schema, "strict": True},
    }
    return body


def score_range(grader: dict[str, Any]) -> tuple[float, float]:
    low, high = grader.get("range") or (0.0, 1.0)
    return float(low), float(high)


def parse_score(text: str, grader: dict[str, Any]) -> float:
    """The judge's score, clamped into the grader's range."""
    value = _result(text)
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    else:
        found = _NUMBER.search(value if isinstance(value, str) else text)
        if found is None:
            raise ParseError(f"the judge's answer holds no score: {text[:200]!r}")
        number = float(found.group())
    low, high = score_range(grader)
    return min(max(number, low), high)


def parse_label(text: str, grader: dict[str, Any]) -> str:
    value = _result(text)
    labels = list(grader["labels"])
    if isinstance(value, str) and value in labels:
        return value
    named = [label for label in labels if label.casefold() in (value if isinstance(value, str) else text).casefold()]
    if len(named) == 1:
        return named[0]
    raise ParseError(f"the judge's answer names none of the labels {labels}: {text[:200]!r}")


def _result(text: str) -> Any:
    try:
        data = json.loads(text)
    except ValueError:
        return text
    return data.get("result", text) if isinstance(data, dict) else data
