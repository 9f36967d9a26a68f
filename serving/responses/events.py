"""A streamed chat completion as the Responses event sequence (``EventStream``): ``response.created``, the output
items' added / delta / done events, ``response.completed`` (or ``incomplete``, or ``error`` + ``response.failed``).
It only translates chunks it is fed; reading the engine's stream and storing the result is the service's."""

from __future__ import annotations

from typing import Any

import msgspec

from serving.responses.output import _logprobs, call_item, finish, message_item, reasoning_item
from serving.responses.request import ResponsesRequest
from storage.ids import new_id

_encode = msgspec.json.Encoder().encode


class EventStream:
    """Chat completion chunks in, Responses events out (``event: <type>`` + ``data: <json>``, numbered)."""

    def __init__(self, req: ResponsesRequest, response: dict[str, Any]) -> None:
        self.req, self.response = req, response
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self.open: dict[str, int] = {}  # "reasoning" | "message" | "call:<index>" → output index
        self.texts: dict[int, str] = {}  # output index → text so far
        self.logprobs: dict[int, list[dict[str, Any]]] = {}
        self.finish_reason: str | None = None
        self.usage: Any = None

    def event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + _encode(data) + b"\n\n"

    def start(self) -> list[bytes]:
        return [
            self.event("response.created", response=self.response),
            self.event("response.in_progress", response=self.response),
        ]

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                out += self._reasoning(delta["reasoning_content"])
            if delta.get("content"):
                out += self._text(delta["content"], _logprobs(choice.get("logprobs")))
            for call in delta.get("tool_calls") or []:
                out += self._call(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return out

    def _add(self, key: str, item: dict[str, Any]) -> tuple[int, list[bytes]]:
        index = len(self.output)
        self.output.append(item)
        self.open[key] = index
        return index, [self.event("response.output_item.added", output_index=index, item=item)]

    def _reasoning(self, text: str) -> list[bytes]:
        out: list[bytes] = []
        summarize = bool(self.req.reasoning and self.req.reasoning.get("summary"))
        if "reasoning" not in self.open:
            index, out = self._add("reasoning", {"id": new_id("rs_"), "type": "reasoning", "summary": []})
            self.texts[index] = ""
            if summarize:
                out.append(
                    self.event(
                        "response.reasoning_summary_part.added",
                        item_id=self.output[index]["id"],
                        output_index=index,
                        summary_index=0,
                        part={"type": "summary_text", "text": ""},
                    )
                )
        index = self.open["reasoning"]
        self.texts[index] += text
        item_id = self.output[index]["id"]
        out.append(
            self.event(
                "response.reasoning_text.delta", item_id=item_id, output_index=index, content_index=0, delta=text
            )
        )
        if summarize:
            out.append(
                self.event(
                    "response.reasoning_summary_text.delta",
                    item_id=item_id,
                    output_index=index,
                    summary_index=0,
                    delta=text,
                )
            )
        return out

    def _text(self, text: str, logprobs: list[dict[str, Any]]) -> list[bytes]:
        out = self._close("reasoning")
        if "message" not in self.open:
            index, added = self._add(
                "message",
                {"id": new_id("msg_"), "type": "message", "role": "assistant", "status": "in_progress", "content": []},
            )
            out += added
            self.texts[index], self.logprobs[index] = "", []
            out.append(
                self.event(
                    "response.content_part.added",
                    item_id=self.output[index]["id"],
                    output_index=index,
                    content_index=0,
                    part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
                )
            )
        index = self.open["message"]
        self.texts[index] += text
        self.logprobs[index] += logprobs
        out.append(
            self.event(
                "response.output_text.delta",
                item_id=self.output[index]["id"],
                output_index=index,
                content_index=0,
                delta=text,
                logprobs=logprobs,
            )
        )
        return out

    def _call(self, call: dict[str, Any]) -> list[bytes]:
        key = f"call:{call.get('index', 0)}"
        function = call.get("function") or {}
        out: list[bytes] = []
        if key not in self.open:
            out += self._close("reasoning") + self._close("message")
            for other in [k for k in self.open if k.startswith("call:")]:
                out += self._close(other)
            index, added = self._add(
                key,
                call_item(
                    new_id("fc_"), call.get("id") or new_id("call_"), function.get("name") or "", "", "in_progress"
                ),
            )
            out += added
            self.texts[index] = ""
        index = self.open[key]
        item = self.output[index]
        if function.get("name") and not item["name"]:
            item["name"] = function["name"]
        if function.get("arguments"):
            self.texts[index] += function["arguments"]
            out.append(
                self.event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=index,
                    delta=function["arguments"],
                )
            )
        return out

    def _close(self, key: str) -> list[bytes]:
        index = self.open.pop(key, None)
        if index is None:
            return []
        item, text = self.output[index], self.texts[index]
        out: list[bytes] = []
        if item["type"] == "reasoning":
            summarize = bool(self.req.reasoning and self.req.reasoning.get("summary"))
            out.append(
                self.event(
                    "response.reasoning_text.done", item_id=item["id"], output_index=index, content_index=0, text=text
                )
            )
            if summarize:
                out.append(
                    self.event(
                        "response.reasoning_summary_text.done",
                        item_id=item["id"],
                        output_index=index,
                        summary_index=0,
                        text=text,
                    )
                )
                out.append(
                    self.event(
                        "response.reasoning_summary_part.done",
                        item_id=item["id"],
                        output_index=index,
                        summary_index=0,
                        part={"type": "summary_text", "text": text},
                    )
                )
            item = self.output[index] = reasoning_item(item["id"], text, summarize)
        elif item["type"] == "message":
            status = "incomplete" if self.finish_reason == "length" else "completed"
            logprobs = self.logprobs[index]
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}
            out.append(
                self.event(
                    "response.output_text.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    text=text,
                    logprobs=logprobs,
                )
            )
            out.append(
                self.event(
                    "response.content_part.done", item_id=item["id"], output_index=index, content_index=0, part=part
                )
            )
            item = self.output[index] = message_item(item["id"], text, status, logprobs)
        else:
            arguments = text or "{}"
            out.append(
                self.event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=item["name"],
                    arguments=arguments,
                )
            )
            item = self.output[index] = {**item, "arguments": arguments, "status": "completed"}
        out.append(self.event("response.output_item.done", output_index=index, item=item))
        return out

    def end(self) -> tuple[dict[str, Any], list[bytes]]:
        """Close what is open; the final Response and its last events (``response.completed`` or ``incomplete``)."""
        out: list[bytes] = []
        if not self.output:  # nothing generated: still one (empty) message, as a non-streamed answer has
            out += self._text_open_empty()
        for key in sorted(self.open, key=self.open.__getitem__):
            out += self._close(key)
        response = finish({**self.response, "output": self.output}, self.finish_reason, self.usage)
        kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        out.append(self.event(kind, response=response))
        return response, out

    def _text_open_empty(self) -> list[bytes]:
        out = self._text("", [])
        return out[:-1]  # the opening events, without an empty delta

    def failed(self, error: dict[str, Any]) -> list[bytes]:
        message = str(error.get("message") or "The engine failed.")
        code = error.get("code") if isinstance(error.get("code"), str) else None
        response = {
            **self.response,
            "output": self.output,
            "status": "failed",
            "error": {"code": "server_error", "message": message},
        }
        return [
            self.event("error", code=code, message=message, param=error.get("param")),
            self.event("response.failed", response=response),
        ]
