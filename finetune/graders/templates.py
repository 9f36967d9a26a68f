"""One template renderer for graders and eval prompts: ``{{item.answer}}``, ``{{sample.output_text}}``, …

Namespaces, as OpenAI defines them: ``item`` is the data-source row; ``sample`` is what the model produced —
``output_text``, ``output_json`` (the output parsed as JSON, when it is JSON), ``output_tools`` (its tool calls),
``choices`` — plus whatever a jsonl row's own ``sample`` carries. A path walks objects by key and arrays by index
(``item.tags.0`` or ``item.tags[0]``). Strings are inserted as they are, anything else as JSON. A template is
checked when its grader is created (``problem``); a variable with no value in a given item is a ``TemplateError``
when it is rendered, which errors that item only.
"""

from __future__ import annotations

import json
import re
from typing import Any

VARIABLE = re.compile(r"\{\{\s*(.*?)\s*\}\}")
NAMESPACES = ("item", "sample")
_PATH = re.compile(r"^[A-Za-z_]\w*(?:\.\w+|\[\d+\])*$")
_PART = re.compile(r"\w+|\[\d+\]")


class TemplateError(ValueError):
    """A variable that has no value for this item."""


def problem(template: str, namespaces: tuple[str, ...] = NAMESPACES) -> str | None:
    """Why ``template`` can never render (a malformed variable, a namespace that does not exist), or None."""
    for name in VARIABLE.findall(template):
        if not _PATH.match(name):
            return f"'{{{{{name}}}}}' is not a variable path such as item.answer or sample.output_text"
        if name.split(".")[0].split("[")[0] not in namespaces:
            return (
                f"'{{{{{name}}}}}' names the namespace '{name.split('.')[0]}', which does not exist here "
                f"(use {' or '.join(namespaces)})"
            )
    return None


def lookup(namespace: dict[str, Any], path: str) -> Any:
    value: Any = namespace
    for part in _PART.findall(path):
        if part.startswith("["):
            part = part[1:-1]
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise TemplateError(f"the variable '{path}' has no value for this item")
    return value


def text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def render(template: str, namespace: dict[str, Any]) -> str:
    return VARIABLE.sub(lambda m: text(lookup(namespace, m.group(1))), template)


def sample_namespace(
    output_text: str, tool_calls: list[dict] | None = None, choices: list[dict] | None = None, **extra: Any
) -> dict[str, Any]:
    """The ``sample`` namespace of one model output (``extra``: a jsonl row's own sample fields)."""
    sample: dict[str, Any] = {**extra, "output_text": output_text}
    try:
        parsed = json.loads(output_text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict | list):
        sample["output_json"] = parsed
    elif "output_json" not in extra:
        sample.pop("output_json", None)
    sample["output_tools"] = tool_calls or extra.get("output_tools") or []
    if choices is not None:
        sample["choices"] = choices
    return sample
