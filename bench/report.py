"""Benchmark tables into docs/benchmarks.md: the text between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``."""

from __future__ import annotations

from pathlib import Path


def replace_section(doc: Path, name: str, text: str) -> None:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    content = doc.read_text(encoding="utf-8")
    if begin not in content or end not in content:
        raise ValueError(f"{doc} has no {begin} … {end} section")
    head, rest = content.split(begin, 1)
    doc.write_text(f"{head}{begin}\n{text.strip()}\n{end}{rest.split(end, 1)[1]}", encoding="utf-8")
