"""Training data: detect the format, check every example, write it as OpenAI JSONL.

Accepted: OpenAI chat JSONL, OpenAI DPO JSONL, LLaMA-Factory alpaca and sharegpt (plus their ranking/preference
variants), each as JSONL or one JSON array. ``normalize`` streams: it holds one example at a time, each at most
``max_example_bytes`` (a JSON array too, element by element), and stops reading after ``STOP_AFTER`` problems.

OpenAI chat lines whose ``messages`` end with a user turn and hold no assistant turn are reinforcement (RFT)
prompts when the whole file is made of them; in a file that also has supervised examples they are supervised
examples missing their answer (``example_missing_assistant_message``), however the file starts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from finetune.formats import openai_chat
from finetune.formats.detect import FORMATS, Format, classify
from finetune.formats.problems import STOP_AFTER, ExampleErrors, Problem, Problems
from finetune.formats.reader import DEFAULT_MAX_EXAMPLE_BYTES, Record, Unreadable, read_records

__all__ = ["FORMATS", "Normalized", "Problems", "normalize"]


@dataclass(frozen=True)
class Normalized:
    format: str
    kind: str  # supervised | preference
    n_examples: int
    problems: Problems


def normalize(
    path: Path, write: Callable[[bytes], object], max_example_bytes: int = DEFAULT_MAX_EXAMPLE_BYTES
) -> Normalized:
    """Check ``path`` and ``write`` each example as one OpenAI JSONL line. Problems come back, not raised."""
    problems = Problems()
    chosen: Format | None = None
    prompts: list[Problem] = []  # RFT-shaped examples so far: problems if the file turns out supervised
    n = 0
    try:
        for item in read_records(path, max_example_bytes):
            if isinstance(item, Problem):
                problems.add(item)
            else:
                chosen, line = _one(item, _decided(item, chosen, prompts, problems), problems)
                if line is not None:
                    n += 1
                    if not problems:
                        write(line)
            if problems.full:
                break
    except Unreadable as exc:
        problems.add(exc.problem)
    if not problems and n == 0:
        problems.add(Problem("empty_file", "The file holds no examples."))
    name = chosen.name if chosen else "unknown"
    return Normalized(format=name, kind=chosen.kind if chosen else "supervised", n_examples=n, problems=problems)


def _decided(record: Record, chosen: Format | None, prompts: list[Problem], problems: Problems) -> Format | None:
    """The file's format once this record is seen: a supervised example after RFT prompts makes them all
    supervised examples without an answer."""
    rft, chat = FORMATS["openai_reinforcement"], FORMATS["openai_chat"]
    if chosen is None or chosen.name not in (rft.name, chat.name):
        if chosen is None and openai_chat.is_prompt(record.value):
            prompts.append(_missing_answer(record))
        return chosen
    if chosen is rft and classify(record.value) is chat:
        for problem in prompts:
            problems.add(problem)
        return chat
    if chosen is rft and len(prompts) < STOP_AFTER:
        prompts.append(_missing_answer(record))
    return chosen


def _missing_answer(record: Record) -> Problem:
    return Problem("example_missing_assistant_message", openai_chat.MISSING_ANSWER, record.line, record.example)


def _one(record: Record, chosen: Format | None, problems: Problems) -> tuple[Format | None, bytes | None]:
    err = ExampleErrors(record.line, record.example)
    fmt = classify(record.value)
    if chosen is not None and chosen.name == "openai_chat" and fmt is not None and fmt.name == "openai_reinforcement":
        fmt = chosen  # a supervised file's example without an answer: checked (and refused) as supervised
    if fmt is None:
        if not isinstance(record.value, dict):
            err("data_type", "Each example must be a JSON object.")
        else:
            keys = ", ".join(sorted(record.value)) or "none"
            err("missing_messages_list", f"Example has none of messages / conversations / instruction (keys: {keys}).")
    elif chosen is not None and fmt.name != chosen.name:
        err("mixed_formats", f"Example is {fmt.name} but the file started as {chosen.name}; use one format per file.")
    else:
        chosen = fmt
        try:
            example = fmt.convert(record.value, err)
            if example is not None and not err.found:
                fmt.check(example, err)
            if not err.found and example is not None:
                return chosen, (json.dumps(example, ensure_ascii=False) + "\n").encode()
        except RecursionError:
            err("invalid_json", "Not valid JSON: nested too deeply.")
    for problem in err.found:
        problems.add(problem)
    return chosen, None
