"""Reasoning models (DeepSeek-R1 and its distills): ``<think>…</think>`` becomes ``reasoning_content``.

Their chat template opens ``<think>`` in the prompt, so the completion starts inside the thought and only closes it;
a completion that repeats the opening tag has it stripped. Text before ``</think>`` is reasoning, text after is
content (leading blank lines dropped), as DeepSeek's own API returns them. Works on a stream: a piece of text that
may be the start of ``</think>`` is held back until the next delta decides.
"""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


class ThinkSplitter:
    def __init__(self) -> None:
        self._buf = ""
        self._thinking = True
        self._opened = False  # past any leading "<think>"
        self._content_started = False

    def feed(self, text: str) -> tuple[str, str]:
        """Returns the (reasoning, content) this text completes."""
        self._buf += text
        reasoning = content = ""
        if self._thinking:
            if not self._opened:
                head = self._buf.lstrip()
                if len(head) < len(OPEN) and OPEN.startswith(head):
                    return "", ""  # still could be "<think>"
                if head.startswith(OPEN):
                    self._buf = head[len(OPEN) :]
                self._opened = True
            end = self._buf.find(CLOSE)
            if end < 0:
                keep = _partial_suffix(self._buf, CLOSE)
                reasoning, self._buf = self._buf[: len(self._buf) - keep], self._buf[len(self._buf) - keep :]
                return reasoning, ""
            reasoning, self._buf, self._thinking = self._buf[:end], self._buf[end + len(CLOSE) :], False
        content, self._buf = self._buf, ""
        if not self._content_started:
            content = content.lstrip("\n")
            self._content_started = bool(content)
        return reasoning, content

    def flush(self) -> tuple[str, str]:
        rest, self._buf = self._buf, ""
        return (rest, "") if self._thinking else ("", rest)


def split(text: str) -> tuple[str, str]:
    splitter = ThinkSplitter()
    reasoning, content = splitter.feed(text)
    more_reasoning, more_content = splitter.flush()
    return reasoning + more_reasoning, content + more_content


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
