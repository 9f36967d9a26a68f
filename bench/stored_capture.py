"""What ``store: true`` costs on the response path: read ``store``/``metadata``, fold a stream, build the row, queue
it. No I/O: the write happens a batch a second in the writer's own task.

    python bench/stored_capture.py
"""

from __future__ import annotations

import time

from serving.request_body import parse
from serving.stored import StoredCompletionWriter, capture
from storage.accounts import Principal
from storage.settings import RequestLimits

BODY = {
    "model": "m",
    "messages": [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "x" * 2000}],
    "temperature": 0,
    "max_tokens": 256,
    "store": True,
    "metadata": {"app": "a", "v": "2"},
}
ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "y" * 1000, "refusal": None},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ],
    "usage": {"prompt_tokens": 500, "completion_tokens": 256, "total_tokens": 756},
}
CHUNK = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "m",
    "choices": [{"index": 0, "delta": {"content": "tok"}, "finish_reason": None, "logprobs": None}],
}


class Discard:
    def add_many(self, rows: list) -> None:
        pass


def main() -> None:
    request, who = parse("chat.completions", BODY, RequestLimits()), Principal("org", "key")
    writer = StoredCompletionWriter(Discard())  # type: ignore[arg-type]

    def drain() -> None:
        writer._pending.clear()
        writer._held = 0

    n = 20_000
    started = time.perf_counter()
    for _ in range(n):
        kept = capture(who, BODY, request)
        assert kept is not None
        writer.queue(kept.row(ANSWER))
        if len(writer._pending) > 1000:
            drain()
    whole = (time.perf_counter() - started) / n
    chunks, streams = 1000, 100
    started = time.perf_counter()
    for _ in range(streams):
        kept = capture(who, BODY, request)
        assert kept is not None
        for _ in range(chunks):
            kept.feed(CHUNK)
        writer.queue(kept.row(kept.streamed()))
        drain()
    per_chunk = (time.perf_counter() - started) / (chunks * streams)
    print(
        f"non-stream (2 KB prompt, 1 KB answer): {whole * 1e6:.1f} µs per request; "
        f"a stream of {chunks} chunks folded and queued: {per_chunk * 1e6:.2f} µs per chunk"
    )


if __name__ == "__main__":
    main()
