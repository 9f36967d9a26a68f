"""Reasoning models: ``<think>…</think>`` → ``reasoning_content``, whole and streamed, however the text is cut."""

from __future__ import annotations

import pytest

from serving.adapters import Adapter
from serving.pool import Target
from serving.proxy import Call
from serving.reasoning import ThinkSplitter, split
from storage.accounts import Principal
from storage.settings import BaseModelSpec

R1_ANSWER = "Okay, 2 + 2 … that is 4.\n</think>\n\nThe answer is **4**."


@pytest.mark.parametrize(
    "text, expected",
    [
        (R1_ANSWER, ("Okay, 2 + 2 … that is 4.\n", "The answer is **4**.")),
        ("<think>\nhmm</think>\n\nYes.", ("\nhmm", "Yes.")),  # a model that repeats the opening tag
        ("still thinking when max_tokens hit", ("still thinking when max_tokens hit", "")),
        ("</think>Direct.", ("", "Direct.")),
        ("a < b </thin k> </think>ok", ("a < b </thin k> ", "ok")),
    ],
)
def test_split_whole_text(text: str, expected: tuple[str, str]) -> None:
    assert split(text) == expected


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 100])
def test_streamed_in_any_pieces_equals_whole(size: int) -> None:
    for text in (R1_ANSWER, "<think>\nhmm</think>\n\nYes.", "no tags at all", "<thi", "x</think"):
        splitter = ThinkSplitter()
        reasoning = content = ""
        for i in range(0, len(text), size):
            r, c = splitter.feed(text[i : i + size])
            reasoning, content = reasoning + r, content + c
        r, c = splitter.flush()
        assert (reasoning + r, content + c) == split(text), (text, size)


def _call(reasoning: bool) -> Call:
    spec = BaseModelSpec(source="x", reasoning=reasoning)
    target = Target("ft:r1:org:x:1", "r1", spec, Adapter("models/j/final", "/p", 8))
    return Call(Principal("org", "key"), "chat.completions", target, None, client_wants_usage=False)


def test_stream_chunks_get_reasoning_content_and_the_callers_model() -> None:
    call = _call(reasoning=True)
    pieces = ["Okay", ", 4.\n</", "think>\n\nIt", " is 4."]
    out = []
    for i, piece in enumerate(pieces):
        chunk = {
            "id": "c1",
            "object": "chat.completion.chunk",
            "model": "models/j/final",
            "created": 1,
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": piece},
                    "logprobs": None,
                    "finish_reason": "stop" if i == len(pieces) - 1 else None,
                    "token_ids": None,
                }
            ],
        }
        out.append(call.chunk(chunk))
    deltas = [c["choices"][0]["delta"] for c in out]
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == "Okay, 4.\n"
    assert "".join(d["content"] for d in deltas) == "It is 4."
    assert all(c["model"] == "ft:r1:org:x:1" and "token_ids" not in c["choices"][0] for c in out)
    # the usage chunk is kept for accounting and dropped for a caller that did not ask for it
    assert call.chunk({"id": "c1", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}) is None
    assert call.usage == {"prompt_tokens": 3, "completion_tokens": 4}


def test_whole_message_split_only_when_configured() -> None:
    for reasoning, expected in (
        (True, ("Okay, 2 + 2 … that is 4.\n", "The answer is **4**.")),
        (False, (None, R1_ANSWER)),
    ):
        data = {
            "model": "models/j/final",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": R1_ANSWER, "reasoning": None}}],
        }
        _call(reasoning).rewrite(data)
        message = data["choices"][0]["message"]
        assert (message.get("reasoning_content"), message["content"]) == expected
        assert "reasoning" not in message and data["model"] == "ft:r1:org:x:1"
