"""Uploads cannot take the gateway's memory or time: fine-tune files are checked in bounded memory (a 512 MiB
JSON array and a 512 MiB JSONL through a real gateway, its RSS sampled), an example over the size limit is a 400
naming it, a hopelessly broken file is not read to its end, and an upload that stalls is ended with nothing stored."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from finetune.formats import normalize
from finetune.formats.check import check_in_child, memory_limit
from finetune.formats.problems import STOP_AFTER
from storage.settings import Settings
from tests.support import LiveGateway
from tests.upload_support import BOUNDARY, MIB, RssSampler, array_body, chat_examples, jsonl_body, upload

BOUND_MIB = 300  # the target: < 300 MB above idle


def run(tmp_path: Path, content: bytes, name: str = "d.json", **kw: int):  # noqa: ANN201
    path = tmp_path / name
    path.write_bytes(content)
    out = io.BytesIO()
    return normalize(path, out.write, **kw), out.getvalue()


def test_array_errors_past_the_first_window_match_a_whole_decode(tmp_path: Path) -> None:
    good = [json.loads(e) for e in chat_examples()] * 60  # ~3.7 MiB, several read windows
    text = json.dumps(good, indent=1)
    cut = text.index('"role": "user"', len(text) * 3 // 4) + len('"role": "user"')
    broken = text[:cut] + ' "stray"' + text[cut:]  # mid-element, mid-line, far past the first window
    with pytest.raises(json.JSONDecodeError) as whole:
        json.loads(broken)
    result, _ = run(tmp_path, broken.encode(), max_example_bytes=4 * MIB)
    problem = result.problems.items[0]
    assert (problem.category, problem.line) == ("invalid_json", whole.value.lineno)
    assert problem.message == f"Not valid JSON: {whole.value.msg} (column {whole.value.colno})."

    result, written = run(tmp_path, text.encode(), max_example_bytes=4 * MIB)
    assert not result.problems and result.n_examples == len(good) and written.count(b"\n") == len(good)


def test_an_example_over_the_limit_is_named(tmp_path: Path) -> None:
    small = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    huge = json.dumps({"messages": [{"role": "user", "content": "q" * 5000}, {"role": "assistant", "content": "a"}]})
    lines = [small, small, huge, small, '{"messages": []}']
    result, _ = run(tmp_path, "\n".join(lines).encode(), "d.jsonl", max_example_bytes=4096)
    assert [(p.category, p.line, p.example) for p in result.problems.items] == [
        ("example_too_large", 3, 3),
        ("missing_messages_list", 5, 5),
    ]  # the read goes on after a long line
    assert "4096-byte limit" in result.problems.render()

    array = "[\n" + ",\n".join([small, huge, small]) + "\n]"
    result, _ = run(tmp_path, array.encode(), max_example_bytes=4096)
    assert [(p.category, p.line, p.example) for p in result.problems.items] == [("example_too_large", 3, 2)]


def test_a_hopeless_file_is_not_read_to_its_end(tmp_path: Path) -> None:
    content = b"[" + b",".join([b"{}"] * 2_000_000) + b"]"  # 6 MiB of examples that are all wrong
    started = time.monotonic()
    result, _ = run(tmp_path, content)
    assert result.problems.total == STOP_AFTER and time.monotonic() - started < 5
    assert f"{STOP_AFTER} problems found, checking stopped (showing the first 10)" in result.problems.render()
    assert result.problems.items[9].example == 10


@pytest.mark.parametrize("layout", ["jsonl", "array"])
def test_deep_nesting_is_a_problem_not_a_crash(tmp_path: Path, layout: str) -> None:
    deep = '{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}"
    content = deep + "\n" if layout == "jsonl" else "[" + deep + "]"
    result, _ = run(tmp_path, content.encode(), "d.jsonl" if layout == "jsonl" else "d.json")
    problem = result.problems.items[0]
    assert (problem.category, problem.line, problem.example) == ("invalid_json", 1, 1)
    assert "nested too deeply" in problem.message


def test_the_check_child_is_capped_in_memory(tmp_path: Path) -> None:
    """The second guard: a child whose parse would outgrow its address space fails alone, and says so."""
    source, target = tmp_path / "lists.json", tmp_path / "out.jsonl"
    source.write_bytes(b'[{"messages": [' + b",".join([b"[]"] * 2_000_000) + b"]}]")  # ~150 MiB of objects
    env = Settings.child_environ(database=False)
    assert asyncio.run(check_in_child(source, target, 8 * MIB, 96 * MIB, env)) is None
    checked = asyncio.run(check_in_child(source, target, 8 * MIB, memory_limit(8 * MIB), env))
    assert checked is not None and "[data_type]" in (checked.problems or "")


# --- through a real gateway -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    data_dir = tmp_path_factory.mktemp("bounds")
    gw = LiveGateway(
        data_dir,
        f"sqlite:///{data_dir / 'db.sqlite'}",
        TUNEGATE_UPLOAD_STALL_SECONDS="1",
        TUNEGATE_MAX_EXAMPLE_BYTES="4096",
    )
    gw.start()
    yield gw
    gw.stop()


def stored(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / "blobs").rglob("*") if p.is_file())


def test_a_stalled_upload_is_ended_and_stores_nothing(small_gateway: LiveGateway) -> None:
    _, _, key = small_gateway.new_org_key("stall")
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="t.jsonl"\r\n\r\n'
    ).encode()
    body = head + b"".join(e + b"\n" for e in chat_examples(8))
    request = (
        f"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {len(body) + 10_000}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", small_gateway.port), timeout=30) as sock:
        sock.sendall(request.encode() + body)  # ... and then nothing more
        started = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    waited = time.monotonic() - started
    status, payload = answer.split(b"\r\n", 1)[0], json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert b" 400 " in status and 0.9 < waited < 10, (status, waited)
    assert payload["error"]["code"] == "upload_stalled" and "1 seconds" in payload["error"]["message"]
    assert stored(small_gateway.data_dir) == []
    files = httpx.get(f"{small_gateway.url}/v1/files", headers={"authorization": f"Bearer {key}"}).json()
    assert files["data"] == []


def test_an_oversized_example_is_a_400_naming_its_line(small_gateway: LiveGateway) -> None:
    _, _, key = small_gateway.new_org_key("oversized")
    lines = chat_examples(3)
    lines[1] = json.dumps(
        {"messages": [{"role": "user", "content": "x" * 5000}, {"role": "assistant", "content": "y"}]}
    ).encode()
    r = upload(small_gateway.url, key, iter([b"\n".join(lines) + b"\n"]), "t.jsonl")
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_file_format", "file")
    assert "line 2" in error["message"] and "[example_too_large]" in error["message"] and "4096" in error["message"]
    assert stored(small_gateway.data_dir) == []


@pytest.fixture(scope="module")
def big_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveGateway, str]]:
    data_dir = tmp_path_factory.mktemp("big-uploads")
    gw = LiveGateway(data_dir, f"sqlite:///{data_dir / 'db.sqlite'}", TUNEGATE_MAX_UPLOAD_BYTES=str(512 * MIB))
    gw.start()
    _, _, key = gw.new_org_key("big")
    upload(gw.url, key, jsonl_body(MIB), "warm.jsonl").raise_for_status()  # the first upload's imports
    yield gw, key
    gw.stop()


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["array", "jsonl"])
def test_512_mib_upload_is_validated_in_bounded_memory(big_gateway, layout: str) -> None:
    gateway, key = big_gateway
    body = array_body(512 * MIB) if layout == "array" else jsonl_body(512 * MIB)
    with RssSampler(gateway.proc.pid) as sampler:
        r = upload(gateway.url, key, body, f"big.{'json' if layout == 'array' else 'jsonl'}")
    assert r.status_code == 200, r.text
    assert r.json()["bytes"] > 500 * MIB and r.json()["status"] == "processed"
    peak = sampler.result
    assert peak.growth_mib < BOUND_MIB, f"validating {layout} grew the gateway by {peak.growth_mib:.0f} MiB"
    httpx.delete(f"{gateway.url}/v1/files/{r.json()['id']}", headers={"authorization": f"Bearer {key}"})
