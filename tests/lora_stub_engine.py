"""A stand-in for a vLLM OpenAI server with runtime LoRA updating, for the placement tests (many gateways, many
replicas, no model compute): ``python tests/lora_stub_engine.py PORT``.

It keeps what vLLM keeps — the adapters loaded by name (``/v1/load_lora_adapter``, 400 "has already been loaded"
for a second load, ``/v1/unload_lora_adapter``), listed by ``/v1/models`` with their ``parent`` — and answers a
chat completion for the base or a loaded adapter only (404 otherwise, as vLLM does). ``GET /stub/log`` tells the
test every load and unload it saw, with the lora_path and the largest number loaded at once.
"""

from __future__ import annotations

import json
import sys
import time

import uvicorn

BASE = "stub"
loaded: dict[str, str] = {}
log: dict[str, object] = {"loads": [], "unloads": [], "peak": 0, "chats": {}}


async def _send(send, status: int, body: object) -> None:  # noqa: ANN001
    raw = json.dumps(body).encode() if not isinstance(body, bytes) else body
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": raw})


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
    request = json.loads(body) if body else {}
    if path == "/health":
        return await _send(send, 200, b"")
    if path == "/stub/log":
        return await _send(send, 200, {**log, "loaded": sorted(loaded)})
    if path == "/v1/models":
        cards = [{"id": BASE, "object": "model", "root": BASE, "parent": None}]
        cards += [{"id": name, "object": "model", "root": root, "parent": BASE} for name, root in loaded.items()]
        return await _send(send, 200, {"object": "list", "data": cards})
    if path == "/v1/load_lora_adapter":
        name = request["lora_name"]
        if name in loaded:
            return await _send(send, 400, {"error": {"message": f"The lora adapter '{name}' has already been loaded."}})
        loaded[name] = request["lora_path"]
        log["loads"].append({"name": name, "path": request["lora_path"]})  # type: ignore[union-attr]
        log["peak"] = max(int(log["peak"]), len(loaded))  # type: ignore[call-overload]
        return await _send(send, 200, b"Success")
    if path == "/v1/unload_lora_adapter":
        name = request["lora_name"]
        if loaded.pop(name, None) is None:
            return await _send(send, 404, {"error": {"message": f"The lora adapter '{name}' cannot be found."}})
        log["unloads"].append(name)  # type: ignore[union-attr]
        return await _send(send, 200, b"Success")
    if path == "/v1/chat/completions":
        model = request.get("model")
        if model != BASE and model not in loaded:
            return await _send(send, 404, {"error": {"message": f"The model `{model}` does not exist."}})
        chats = log["chats"]
        chats[model] = chats.get(model, 0) + 1  # type: ignore[union-attr,index]
        return await _send(
            send,
            200,
            {
                "id": f"chatcmpl-{time.monotonic_ns():x}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": f"from {model}"},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
            },
        )
    return await _send(send, 404, {"error": {"message": f"no route {path}"}})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
