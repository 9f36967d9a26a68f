"""A chat completion as a Response (``from_chat``): the Response skeleton, its output items (message, function
call, reasoning), usage and final status. Shared by the JSON answer, the event stream and batch lines; nothing
here stores or streams."""

from __future__ import annotations

from typing import Any

from serving.responses.request import ResponsesRequest
from storage.ids import new_id, now


def skeleton(req: ResponsesRequest, response_id: str, created_at: int, status: str) -> dict[str, Any]:
    """The Response object before any output: what ``response.created`` and a queued background response show."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": req.background,
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "max_tool_calls": None,
        "model": req.model,
        "output": [],
        "parallel_tool_calls": req.parallel_tool_calls,
        "previous_response_id": req.previous_response_id,
        "reasoning": req.reasoning or {"effort": None, "summary": None},
        "service_tier": "default",
        "store": req.store,
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "text": {"format": req.text_format, "verbosity": "medium"},
        "tool_choice": req.tool_choice,
        "tools": req.tools,
        "top_logprobs": req.top_logprobs or 0,
        "top_p": 1.0 if req.top_p is None else req.top_p,
        "truncation": req.truncation,
        "metadata": req.metadata,
        **({"user": req.user} if req.user is not None else {}),
    }


def usage_of(chat_usage: Any) -> dict[str, Any] | None:
    if not isinstance(chat_usage, dict):
        return None
    prompt, completion = int(chat_usage.get("prompt_tokens") or 0), int(chat_usage.get("completion_tokens") or 0)
    cached = (chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def _logprobs(chat_logprobs: Any) -> list[dict[str, Any]]:
    content = chat_logprobs.get("content") if isinstance(chat_logprobs, dict) else None
    return [
        {
            "token": t["token"],
            "logprob": t["logprob"],
            "bytes": t.get("bytes") or [],
            "top_logprobs": [
                {"token": x["token"], "logprob": x["logprob"], "bytes": x.get("bytes") or []}
                for x in t.get("top_logprobs") or []
            ],
        }
        for t in content or []
    ]


def message_item(item_id: str, text: str, status: str, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}],
    }


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def reasoning_item(item_id: str, text: str, summarize: bool) -> dict[str, Any]:
    """The model's thought, as open-weight models give it: the text itself (``content``), and as the summary too
    when one was asked for (tunegate does not summarize it)."""
    return {
        "id": item_id,
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": text}] if summarize else [],
        "content": [{"type": "reasoning_text", "text": text}],
    }


def finish(response: dict[str, Any], finish_reason: str | None, usage: Any) -> dict[str, Any]:
    """Status, completion time and usage of a generated response."""
    if finish_reason == "length":
        response["status"], response["incomplete_details"] = "incomplete", {"reason": "max_output_tokens"}
    else:
        response["status"] = "completed"
    response["completed_at"] = now()
    if (counted := usage_of(usage)) is not None:
        response["usage"] = counted
    return response


def from_chat(req: ResponsesRequest, chat: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    """A chat completion's first choice as the Response's output (``response``: its skeleton)."""
    choice = (chat.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    if message.get("reasoning_content"):
        output.append(
            reasoning_item(
                new_id("rs_"), message["reasoning_content"], bool(req.reasoning and req.reasoning.get("summary"))
            )
        )
    if message.get("content") or not message.get("tool_calls"):
        status = "incomplete" if choice.get("finish_reason") == "length" else "completed"
        output.append(
            message_item(new_id("msg_"), message.get("content") or "", status, _logprobs(choice.get("logprobs")))
        )
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        output.append(
            call_item(
                new_id("fc_"),
                call.get("id") or new_id("call_"),
                function.get("name", ""),
                function.get("arguments") or "{}",
                "completed",
            )
        )
    response["output"] = output
    return finish(response, choice.get("finish_reason"), chat.get("usage"))
