"""Training-data formats → OpenAI JSONL, and the problems reported for bad examples."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from finetune.formats import normalize
from tests.support import DATA


def run(tmp_path: Path, content: str | bytes, name: str = "d.jsonl"):  # noqa: ANN201
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    out = io.BytesIO()
    result = normalize(path, out.write)
    return result, [json.loads(line) for line in out.getvalue().decode().splitlines()]


def jsonl(*rows: object) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def test_alpaca_with_system_history_and_input(tmp_path: Path) -> None:
    row = {"instruction": "翻译", "input": "hello", "output": "你好", "system": "你是翻译", "history": [["q1", "a1"]]}
    result, rows = run(tmp_path, json.dumps([row]), "a.json")
    assert (result.format, result.kind, result.n_examples) == ("alpaca", "supervised", 1)
    assert rows[0]["messages"] == [
        {"role": "system", "content": "你是翻译"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "翻译\nhello"},
        {"role": "assistant", "content": "你好"},
    ]


def test_sharegpt_tools_calls_and_observations(tmp_path: Path) -> None:
    row = {
        "system": "sys",
        "conversations": [
            {"from": "human", "value": "weather?"},
            {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "北京"}}'},
            {"from": "observation", "value": '{"temp": 3}'},
            {"from": "gpt", "value": "3 度"},
        ],
        "tools": '[{"name": "get_weather", "parameters": {"type": "object"}}]',
    }
    result, rows = run(tmp_path, jsonl(row))
    messages = rows[0]["messages"]
    assert result.format == "sharegpt" and [m["role"] for m in messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    call = messages[2]["tool_calls"][0]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "北京"}'}
    assert messages[3]["tool_call_id"] == call["id"]
    assert rows[0]["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    ]


def test_think_blocks_are_kept_as_text(tmp_path: Path) -> None:
    row = {
        "conversations": [
            {"from": "human", "value": "新闻分类：股市大涨"},
            {"from": "gpt", "value": "<think>\n看关键词\n</think>\n\n经济"},
        ]
    }
    _, rows = run(tmp_path, jsonl(row))
    assert rows[0]["messages"][1]["content"] == "<think>\n看关键词\n</think>\n\n经济"


@pytest.mark.parametrize(
    "row",
    [
        {
            "conversations": [{"from": "human", "value": "q"}],
            "chosen": {"from": "gpt", "value": "good"},
            "rejected": {"from": "gpt", "value": "bad"},
        },
        {"instruction": "q", "input": "", "chosen": "good", "rejected": "bad"},
        {
            "input": {"messages": [{"role": "user", "content": "q"}]},
            "preferred_completion": [{"role": "assistant", "content": "good"}],
            "non_preferred_completion": [{"role": "assistant", "content": "bad"}],
        },
    ],
)
def test_preference_formats_normalize_to_dpo(tmp_path: Path, row: dict) -> None:
    result, rows = run(tmp_path, jsonl(row))
    assert result.kind == "preference" and not result.problems
    assert rows == [
        {
            "input": {"messages": [{"role": "user", "content": "q"}]},
            "preferred_output": [{"role": "assistant", "content": "good"}],
            "non_preferred_output": [{"role": "assistant", "content": "bad"}],
        }
    ]


def test_mixed_formats_are_refused(tmp_path: Path) -> None:
    result, _ = run(
        tmp_path, jsonl({"instruction": "a", "output": "b"}, {"messages": [{"role": "user", "content": "x"}]})
    )
    assert [p.category for p in result.problems.items] == ["mixed_formats"] and result.problems.items[0].line == 2


def test_bom_and_blank_lines(tmp_path: Path) -> None:
    content = (
        b"\xef\xbb\xbf"
        + jsonl({"instruction": "a", "output": "b"}).encode()
        + b"\n\n"
        + jsonl({"instruction": "c", "output": "d"}).encode()
    )
    result, rows = run(tmp_path, content)
    assert result.n_examples == 2 and not result.problems and len(rows) == 2


def test_json_array_errors_point_at_the_line(tmp_path: Path) -> None:
    text = '[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c", "output": "d"}\n  {"instruction": "e"}\n]'
    result, _ = run(tmp_path, text, "a.json")
    problem = result.problems.items[0]
    assert (problem.category, problem.line) == ("invalid_json", 4) and "after example 2" in problem.message


def test_unknown_sharegpt_role(tmp_path: Path) -> None:
    result, _ = run(tmp_path, jsonl({"conversations": [{"from": "robot", "value": "x"}]}))
    problem = result.problems.items[0]
    assert (problem.category, problem.line, problem.index) == ("unrecognized_role", 1, 1)
    assert "robot" in problem.render()


@pytest.mark.parametrize(
    "name", ["alpaca_zh_demo.json", "glaive_toolcall_zh_demo.json", "dpo_zh_demo.json", "identity.json"]
)
def test_shared_datasets_normalize_cleanly(tmp_path: Path, name: str) -> None:
    out = io.BytesIO()
    result = normalize(DATA / name, out.write)
    assert not result.problems and result.n_examples == len(json.loads((DATA / name).read_text()))
