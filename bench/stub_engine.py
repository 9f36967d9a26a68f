"""An instant stand-in for a vLLM OpenAI server, to measure what the gateway itself adds (bench/serve.py --stub).

    python bench/stub_engine.py PORT

Streams ``max_tokens`` chunks shaped like vLLM 0.32's (same fields, compact JSON) with no compute in between, so
direct-vs-gateway differences are the gateway's. Never used by tests: the real engine is tested there.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import uvicorn


def _chunk(rid: str, model: str, delta: dict, finish: str | None = None) -> bytes:
    body = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish, "token_ids": None}],
    }
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


async def app(scope, receive, send) -> None:  # noqa: ANN001 - a bare ASGI app
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    path = scope["path"]
    if path != "/v1/chat/completions":
        status, payload = (200, b"ok") if path in ("/health", "/v1/load_lora_adapter") else (404, b"{}")
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": payload})
        return
    request = json.loads(body)
    model, n = request["model"], int(request.get("max_tokens") or 16)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    rid = f"chatcmpl-{time.monotonic_ns():x}"
    await send(
        {
            "type": "http.response.body",
            "body": _chunk(rid, model, {"role": "assistant", "content": ""}),
            "more_body": True,
        }
    )
    delay = float(os.environ.get("STUB_DELAY_S", "0"))  # per chunk, to mimic an engine generating
    for i in range(n):
        if delay:
            await asyncio.sleep(delay)
        await send(
            {
                "type": "http.response.body",
                "body": _chunk(rid, model, {"content": " tok"}, "length" if i == n - 1 else None),
                "more_body": True,
            }
        )
    usage = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": {"prompt_tokens": 10, "total_tokens": 10 + n, "completion_tokens": n},
    }
    await send({"type": "http.response.body", "body": b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n"})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
