"""Training examples → token ids and labels, and the collators that batch them.

Loss is on assistant tokens only: each conversation is rendered with the chat template turn by turn, and the
text each assistant message adds (its content, tool calls and end-of-turn marker) is labelled; everything
else (system, user, tool results, the assistant header, messages with ``weight: 0``) is ``-100``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IGNORE = -100


class TemplateError(ValueError):
    """The chat template is not prefix-stable, so assistant turns cannot be located."""


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool

    @property
    def n_trained(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


@dataclass
class EncodeStats:
    examples: int = 0
    tokens: int = 0
    truncated: list[int] = field(default_factory=list)  # 1-based example numbers
    empty: list[int] = field(default_factory=list)  # nothing left to train on after truncation


class ChatEncoder:
    def __init__(self, tokenizer: Any, template: str, cutoff_len: int) -> None:
        self.tokenizer, self.template, self.cutoff_len = tokenizer, template, cutoff_len

    def render(self, messages: list[dict], tools: list | None, generation_prompt: bool) -> str:
        if not messages:
            return ""
        return self.tokenizer.apply_chat_template(
            messages,
            tools=tools,
            chat_template=self.template,
            tokenize=False,
            add_generation_prompt=generation_prompt,
        )

    def encode(self, example: dict[str, Any]) -> Encoded:
        messages = [{k: v for k, v in m.items() if k != "weight"} for m in example["messages"]]
        tools = example.get("tools")
        ids: list[int] = []
        labels: list[int] = []
        done = ""
        for i, message in enumerate(example["messages"]):
            if message["role"] == "assistant" and i > 0:
                header = self.render(messages[:i], tools, True)  # up to and including "assistant\n"
                self._append(header, done, ids, labels, train=False)
                done = header
            full = self.render(messages[: i + 1], tools, False)
            train = message["role"] == "assistant" and message.get("weight", 1) != 0
            self._append(full, done, ids, labels, train=train)
            done = full
        truncated = len(ids) > self.cutoff_len
        return Encoded(ids[: self.cutoff_len], labels[: self.cutoff_len], truncated)

    def _append(self, text: str, done: str, ids: list[int], labels: list[int], *, train: bool) -> None:
        if not text.startswith(done):
            raise TemplateError(
                "The chat template re-renders earlier turns differently (it is not prefix-stable), so assistant "
                "turns cannot be masked; choose a named template (chatml, llama3, deepseek-r1) for this model."
            )
        piece = self.tokenizer(text[len(done) :], add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if train else [IGNORE] * len(piece)


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def encode_file(encoder: ChatEncoder, path: Path) -> tuple[list[dict[str, list[int]]], EncodeStats]:
    rows, stats = [], EncodeStats()
    for n, example in enumerate(read_jsonl(path), start=1):
        enc = encoder.encode(example)
        stats.examples += 1
        if enc.truncated:
            stats.truncated.append(n)
        if enc.n_trained == 0:
            stats.empty.append(n)
            continue
        stats.tokens += len(enc.input_ids)
        rows.append({"input_ids": enc.input_ids, "labels": enc.labels})
    return rows, stats


def preference_rows(path: Path) -> list[dict[str, Any]]:
    """OpenAI DPO JSONL → TRL's conversational ``prompt`` / ``chosen`` / ``rejected``."""
    rows = []
    for example in read_jsonl(path):
        rows.append(
            {
                "prompt": example["input"]["messages"],
                "chosen": example["preferred_output"],
                "rejected": example["non_preferred_output"],
            }
        )
    return rows


class PadCollator:
    """Right-pads each batch to its longest example (labels with -100)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        ids = [f["input_ids"] + [self.pad_id] * (width - len(f["input_ids"])) for f in features]
        labels = [f["labels"] + [IGNORE] * (width - len(f["labels"])) for f in features]
        mask = [[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features]
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}


def micro_batches(batch: dict[str, Any], max_tokens: int) -> list[dict[str, Any]]:
    """A ``PadCollator`` batch as consecutive micro-batches of whole examples, each trimmed to its own longest
    example and holding at most ``max_tokens`` tokens that way (an example longer than that is one on its own).
    Anything else (a packed batch: one row) comes back whole."""
    ids = batch["input_ids"]
    if set(batch) != {"input_ids", "labels", "attention_mask"} or ids.shape[0] == 1 or ids.numel() <= max_tokens:
        return [batch]
    spans, start, width = [], 0, 0
    for i, length in enumerate(batch["attention_mask"].sum(dim=1).tolist()):
        if i > start and max(width, length) * (i - start + 1) > max_tokens:
            spans.append((start, i, width))
            start, width = i, 0
        width = max(width, length)
    spans.append((start, ids.shape[0], width))
    return [{key: value[a:b, :w] for key, value in batch.items()} for a, b, w in spans]


def packing_collator(boundaries: bool = False) -> Any:
    """Padding-free packing: one row per batch, ``position_ids`` restart per example, so attention never
    crosses examples (flash-attention varlen on GPU; transformers builds a block-diagonal mask for sdpa).
    ``boundaries`` adds the examples' cumulative lengths (``cu_seq_lens_*``, ``max_length_*``) that varlen
    attention takes (``attention.NAME``)."""
    from transformers import DataCollatorWithFlattening

    return DataCollatorWithFlattening(
        return_position_ids=True, separator_id=IGNORE, return_flash_attn_kwargs=boundaries
    )
