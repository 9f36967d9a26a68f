"""The bad-input catalogue: each is a clear 4xx in the OpenAI envelope, nothing is stored, nothing is lost."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest

from tests.support import LiveGateway, SpecRecorder
from tests.test_files_api import chat_jsonl

GOOD = chat_jsonl(3)
LINES = GOOD.decode().splitlines(keepends=True)

CASES = [
    # id, filename, content, purpose, status, code, param, words the message must contain
    (
        "malformed-json-line",
        "t.jsonl",
        (LINES[0] + '{"messages": [\n' + LINES[1]).encode(),
        "fine-tune",
        400,
        "invalid_file_format",
        "file",
        ["line 2", "invalid_json"],
    ),
    (
        "wrong-role",
        "t.jsonl",
        GOOD + b'{"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]}\n',
        "fine-tune",
        400,
        "invalid_file_format",
        "file",
        ["line 4", "message 1", "unrecognized_role", "'bot'"],
    ),
    (
        "no-assistant",
        "t.jsonl",
        b'{"messages": [{"role": "user", "content": "x"}]}\n' + GOOD,
        "fine-tune",
        400,
        "invalid_file_format",
        "file",
        ["line 1", "example_missing_assistant_message"],
    ),
    (
        "missing-content",
        "t.jsonl",
        GOOD + b'{"messages": [{"role": "user"}, {"role": "assistant", "content": "y"}]}\n',
        "fine-tune",
        400,
        "invalid_file_format",
        "file",
        ["line 4", "missing_content"],
    ),
    (
        "bad-weight",
        "t.jsonl",
        b'{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": 2}]}\n',
        "fine-tune",
        400,
        "invalid_file_format",
        "file",
        ["invalid_weight"],
    ),
    ("not-an-object", "t.jsonl", b"[1, 2]\n", "fine-tune", 400, "invalid_file_format", "file", ["data_type"]),
    ("empty-file", "t.jsonl", b"", "fine-tune", 400, "invalid_file_format", "file", ["empty_file"]),
    (
        "not-utf8",
        "t.jsonl",
        LINES[0].encode() + '{"messages": "caf\u00e9"}\n'.encode("latin-1"),
        "fine-tune",
        400,
        "invalid_file_format",
        "file",
        ["line 2", "not UTF-8"],
    ),
    (
        "alpaca-array-missing-output",
        "a.json",
        json.dumps(
            [{"instruction": "a", "input": "", "output": "b"}, {"instruction": "c", "input": ""}], indent=2
        ).encode(),
        "fine-tune",
        400,
        "invalid_file_format",
        "file",
        ["line 7", "example 2", "missing_content"],
    ),
    ("path-filename", "../../etc/passwd", GOOD, "fine-tune", 400, "invalid_filename", "file", ["never a path"]),
    ("wrong-purpose", "t.jsonl", GOOD, "fine-tuning", 400, "invalid_value", "purpose", ["Invalid purpose"]),
    ("results-purpose", "t.jsonl", GOOD, "fine-tune-results", 400, "invalid_value", "purpose", ["Invalid purpose"]),
    (
        "too-large",
        "big.jsonl",
        GOOD * (4 * 1024 * 1024 // len(GOOD) + 1),
        "fine-tune",
        413,
        "file_too_large",
        "file",
        ["limit"],
    ),
]


def stored_blobs(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / "blobs").rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def tenant(gateway: LiveGateway) -> tuple[str, str, str]:
    return gateway.new_org_key("bad-input")


@pytest.fixture
def client(gateway: LiveGateway, tenant, recorder: SpecRecorder) -> openai.OpenAI:
    return gateway.client(tenant[2], recorder)


@pytest.mark.parametrize(
    ("filename", "content", "purpose", "status", "code", "param", "words"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_bad_upload_is_refused_and_stores_nothing(
    gateway: LiveGateway, client: openai.OpenAI, filename, content, purpose, status, code, param, words
) -> None:
    keep = client.files.create(file=("keep.jsonl", GOOD), purpose="fine-tune")
    before_ids = [f.id for f in client.files.list()]
    before_blobs = stored_blobs(gateway.data_dir)

    with pytest.raises(openai.APIStatusError) as err:
        client.files.create(file=(filename, content), purpose=purpose)

    assert err.value.status_code == status
    body = err.value.body
    assert (body["type"], body["code"], body["param"]) == ("invalid_request_error", code, param)
    for word in words:
        assert word in body["message"], body["message"]
    assert [f.id for f in client.files.list()] == before_ids
    assert stored_blobs(gateway.data_dir) == before_blobs
    assert client.files.content(keep.id).content == GOOD  # nothing else lost
    assert not Path("/etc/passwd").read_bytes().startswith(GOOD[:20])


def test_problems_are_capped_at_ten_with_a_total(client: openai.OpenAI) -> None:
    # a supervised example first: the 25 prompts after it are supervised examples without an answer (a file of
    # prompts alone is a reinforcement fine-tuning file)
    good = b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'
    bad = good + b"".join(b'{"messages": [{"role": "user", "content": "q"}]}\n' for _ in range(25))
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=("t.jsonl", bad), purpose="fine-tune")
    message = err.value.body["message"]
    assert "25 problem(s) found (showing the first 10)" in message
    assert message.count("\n- ") == 10 and "line 11 " in message and "line 12 " not in message


def test_missing_invalid_and_revoked_keys(gateway: LiveGateway, recorder: SpecRecorder) -> None:
    org_id, key_id, secret = gateway.new_org_key("keys")
    raw = httpx.get(f"{gateway.url}/v1/files")
    assert raw.status_code == 401 and raw.json()["error"]["code"] == "missing_api_key"
    recorder.check("ErrorResponse", raw.json(), "no key")

    with pytest.raises(openai.AuthenticationError) as err:
        gateway.client("sk-tg-not-a-real-key-000000000000", recorder).files.list()
    assert err.value.body["code"] == "invalid_api_key" and "sk-tg-" in err.value.body["message"]

    client = gateway.client(secret, recorder)
    kept = client.files.create(file=("k.jsonl", GOOD), purpose="fine-tune")
    with gateway.admin() as admin:
        admin.post(f"/admin/keys/{key_id}/revoke").raise_for_status()
    with pytest.raises(openai.AuthenticationError) as err:
        client.files.list()
    assert err.value.body["code"] == "revoked_api_key"

    with gateway.admin() as admin:  # the organization's data outlives the key
        new_secret = admin.post(f"/admin/organizations/{org_id}/keys", json={}).raise_for_status().json()["secret"]
    assert gateway.client(new_secret, recorder).files.retrieve(kept.id).id == kept.id


def test_another_organizations_file_id_is_not_found(gateway: LiveGateway, client: openai.OpenAI, recorder) -> None:
    theirs = gateway.client(gateway.new_org_key("them")[2], recorder).files.create(
        file=("t.jsonl", GOOD), purpose="fine-tune"
    )
    with pytest.raises(openai.NotFoundError) as err:
        client.files.retrieve(theirs.id)
    assert err.value.body["param"] == "id"


def test_admin_api_needs_the_admin_credential(gateway: LiveGateway, tenant) -> None:
    for headers in ({}, {"authorization": f"Bearer {tenant[2]}"}, {"authorization": "Bearer sk-tgadmin-wrong"}):
        r = httpx.post(f"{gateway.url}/admin/organizations", json={"name": "x"}, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
