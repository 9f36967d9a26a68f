"""A vLLM tool-call parser: Hermes ``<tool_call>`` blocks, or a whole reply that is a bare JSON tool call.

Loaded inside the vLLM engine only (``--tool-parser-plugin serving.hermes_json``, added by ``serving.engine_main``
when ``serving.tools`` chooses ``hermes_bare_json``); the gateway never imports it, since it needs vLLM.

Why: Qwen2.5's template asks for ``<tool_call>{"name": …, "arguments": …}</tool_call>``, but the small Qwen2.5
checkpoints (Qwen2.5-Coder-0.5B-Instruct here, docs/NOTES.md) answer ``tool_choice: "auto"`` with the call as bare
JSON — ``{"name": "get_weather", "arguments": {"city": "Paris"}}``, a list of such objects, or either inside a
```json fence — so vLLM's hermes parser finds no call and the app gets the JSON as text. This parser is hermes for
everything hermes parses (tagged calls, the structural tags of ``required`` / named choices) and also takes a reply
that *opens* with such an object naming one of the request's declared tools: that object (or each object of the
list) is the call, and text after the JSON is dropped. Any other reply — prose, JSON that is not a call, a call of
a tool the request did not declare — stays content, exactly as hermes leaves it.

Streaming holds back only the reply's opening while it can still become ``{"name": "<tool>"`` (a few tokens); once
the name is complete it is a call of a declared tool (then its arguments stream as hermes streams them) or it is
content (then everything held is sent). A stream that ends inside that opening (a ``max_tokens`` of a handful) loses
those characters: vLLM gives a legacy tool parser no end-of-stream hook.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import regex
from vllm.entrypoints.generate.base.protocol import (
    DeltaMessage,
    ExtractedToolCallInformation,
    FunctionCall,
    ToolCall,
)
from vllm.tool_parsers.abstract_tool_parser import ToolParserManager
from vllm.tool_parsers.hermes_tool_parser import Hermes2ProToolParser

NAME = "hermes_bare_json"
# the opening of a bare call: optional fence, optional list, then the object's "name"; matched partially while streaming
_OPENING = regex.compile(r'\s*(?:```(?:json)?\s*)?(?P<open>\[\s*\{|\{)\s*"name"\s*:\s*"(?P<name>[^"\\]*)"')


def declared(request: Any) -> set[str]:
    """The names of the function tools a request declares (chat ``function.name``, Responses ``name``)."""
    names = set()
    for tool in getattr(request, "tools", None) or []:
        function = getattr(tool, "function", None)
        name = getattr(function, "name", None) if function is not None else getattr(tool, "name", None)
        if isinstance(name, str):
            names.add(name)
    return names


def objects(text: str, start: int) -> list[tuple[str, bool]]:
    """(text, complete) of the JSON object at ``text[start]``, or of each object of the list opening there.

    A character scan that knows strings and escapes, so it works on a prefix of the reply: the last object may
    be open. Stops where the object (or the list) closes."""
    found: list[tuple[str, bool]] = []
    array = text[start] == "["
    base, depth, begin, in_string, escaped = (1 if array else 0), 0, -1, False, False
    for i in range(start, len(text)):
        c = text[i]
        if in_string:
            escaped, in_string = (False, True) if escaped else (c == "\\", c != '"')
            continue
        if c == '"':
            in_string = True
        elif c in "{[":
            depth += 1
            if depth == base + 1 and c == "{":
                begin = i
        elif c in "}]":
            depth -= 1
            if depth == base and begin >= 0:
                found.append((text[begin : i + 1], True))
                begin = -1
                if not array:
                    return found
            elif depth < base:
                return found
    if begin >= 0:
        found.append((text[begin:], False))
    return found


def bare_calls(text: str, tools: set[str]) -> list[dict[str, Any]] | None:
    """The calls of a whole reply that is a bare JSON call (or list of calls) of declared tools, else None."""
    opening = _OPENING.match(text)
    if opening is None or opening.group("name") not in tools:
        return None
    calls = []
    for body, complete in objects(text, opening.start("open")):
        try:
            call = json.loads(body) if complete else None
        except ValueError:
            return None
        if not isinstance(call, dict) or call.get("name") not in tools or not isinstance(call.get("arguments"), dict):
            return None
        calls.append(call)
    return calls or None


class HermesBareJsonToolParser(Hermes2ProToolParser):
    """Hermes, plus a reply that opens with a bare JSON call of a declared tool (module docstring)."""

    def __init__(self, tokenizer: Any, tools: list[Any] | None = None) -> None:
        super().__init__(tokenizer, tools)
        self._bare: bool | None = None  # streaming: None while the opening could still become a bare call
        self._start = 0  # where the bare call's object (or list) starts in the reply
        self._tools: set[str] = set()  # the request's declared tools, read once the opening is decided

    def extract_tool_calls(self, model_output: str, request: Any) -> ExtractedToolCallInformation:
        if self.tool_call_start_token in model_output:
            return super().extract_tool_calls(model_output, request)
        calls = bare_calls(model_output, declared(request))
        if calls is None:
            return ExtractedToolCallInformation(tools_called=False, tool_calls=[], content=model_output)
        return ExtractedToolCallInformation(
            tools_called=True,
            content=None,
            tool_calls=[
                ToolCall(
                    type="function",
                    function=FunctionCall(
                        name=call["name"], arguments=json.dumps(call["arguments"], ensure_ascii=False)
                    ),
                )
                for call in calls
            ],
        )

    def extract_tool_calls_streaming(
        self,
        previous_text: str,
        current_text: str,
        delta_text: str,
        previous_token_ids: Sequence[int],
        current_token_ids: Sequence[int],
        delta_token_ids: Sequence[int],
        request: Any,
    ) -> DeltaMessage | None:
        if self._bare is None:
            opening = _OPENING.match(current_text, partial=True)
            if opening is not None and opening.partial:
                return None  # "{"name": "get_wea…": hold it back until the name is complete
            self._bare = opening is not None and opening.group("name") in declared(request)
            self._start = opening.start("open") if opening is not None else 0
            self._tools = declared(request)
        return super().extract_tool_calls_streaming(
            previous_text, current_text, delta_text, previous_token_ids, current_token_ids, delta_token_ids, request
        )

    def _extract_content(self, current_text: str) -> str | None:
        return None if self._bare else super()._extract_content(current_text)

    def _extract_tool_call_jsons(self, text: str) -> list[tuple[str, bool]]:
        if not self._bare:
            return super()._extract_tool_call_jsons(text)
        # the objects of declared tools (one whose name is not complete yet stays: hermes waits on it)
        return [
            (body, complete)
            for body, complete in objects(text, self._start)
            if self._extract_tool_name(body) in (None, *self._tools)
        ]


ToolParserManager.register_module(NAME, module=HermesBareJsonToolParser)  # what --tool-parser-plugin imports this for
