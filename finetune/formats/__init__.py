"""Training data: detect the format, check every example, write it as OpenAI JSONL.

Accepted: OpenAI chat JSONL, OpenAI DPO JSONL, LLaMA-Factory alpaca and sharegpt (plus their ranking/preference
variants), each as JSONL or one JSON array. ``normalize`` streams: it holds one example at a time, each at most
``max_example_bytes`` (a JSON array too, element by element), and stops reading after ``STOP_AFTER`` problems.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from finetune.formats.detect import FORMATS, Format, classify
from finetune.formats.problems import ExampleErrors, Problem, Problems
from finetune.formats.reader import DEFAULT_MAX_EXAMPLE_BYTES, Record, Unreadable, read_records

__all__ = ["FORMATS", "Normalized", "Problems", "normalize"]


@dataclass(frozen=True)
class Normalized:
    format: str
    kind: str  # supervised | preference
    n_examples: int
    problems: Problems


def normalize(path: Path, write: Callable[[bytes], None],
              max_example_bytes: int = DEFAULT_MAX_EXAMPLE_BYTES) -> Normalized:
    """Check ``path`` and ``write`` each example as one OpenAI JSONL line. Problems come back, not raised."""
    problems = Problems()
    chosen: Format | None = None
    n = 0
    try:
        for item in read_records(path, max_example_bytes):
            if isinstance(item, Problem):
                problems.add(item)
            else:
                chosen, line = _one(item, chosen, problems)
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


def _one(record: Record, chosen: Format | None, problems: Problems) -> tuple[Format | None, bytes | None]:
    err = ExampleErrors(record.line, record.example)
    fmt = classify(record.value)
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
