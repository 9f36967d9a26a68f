"""The Files API through the real `openai` client against a live tunegate, on SQLite and on Postgres."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.support import DATA, LiveGateway, SpecRecorder

SHARED_FILES = [
    ("alpaca_zh_demo.json", "alpaca", 1000),
    ("alpaca_en_demo.json", "alpaca", 999),
    ("identity.json", "alpaca", 91),
    ("glaive_toolcall_zh_demo.json", "sharegpt", 300),
    ("dpo_zh_demo.json", "sharegpt_preference", 300),
]


def chat_jsonl(n: int = 12) -> bytes:
    rows = [
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": f"q{i}"},
                {"role": "assistant", "content": f"a{i}", "weight": 1},
            ]
        }
        for i in range(n)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture(scope="module")
def tenant(gateway: LiveGateway) -> tuple[str, str]:
    org_id, _, secret = gateway.new_org_key("files-tenant")
    return org_id, secret


@pytest.fixture
def client(gateway: LiveGateway, tenant: tuple[str, str], recorder: SpecRecorder) -> openai.OpenAI:
    return gateway.client(tenant[1], recorder)


@pytest.mark.parametrize(("name", "fmt", "rows"), SHARED_FILES)
def test_upload_each_shared_format(
    client: openai.OpenAI, gateway: LiveGateway, tenant, name: str, fmt: str, rows: int
) -> None:
    original = (DATA / name).read_bytes()
    uploaded = client.files.create(file=(name, original), purpose="fine-tune")
    assert (uploaded.filename, uploaded.bytes, uploaded.status) == (name, len(original), "processed")
    assert client.files.content(uploaded.id).content == original  # original bytes, unchanged

    # the normalized OpenAI JSONL: one line per example, each one an OpenAI training example
    normalized = (
        httpx.get(
            f"{gateway.url}/v1/files/{uploaded.id}/content",
            params={"format": "normalized"},
            headers={"authorization": f"Bearer {tenant[1]}"},
        )
        .raise_for_status()
        .text.splitlines()
    )
    assert len(normalized) == rows
    first = json.loads(normalized[0])
    if fmt.endswith("preference"):
        assert first["preferred_output"][0]["role"] == "assistant" and first["input"]["messages"]
    else:
        assert first["messages"][-1]["role"] == "assistant"
    if name.startswith("glaive"):
        calls = [m for line in normalized for m in json.loads(line)["messages"] if m.get("tool_calls")]
        assert calls and calls[0]["tool_calls"][0]["function"]["name"]
        with_calls = [json.loads(line) for line in normalized if '"tool_calls"' in line]
        assert with_calls and all(row["tools"][0]["type"] == "function" for row in with_calls)


def test_upload_openai_chat_and_dpo_jsonl(client: openai.OpenAI) -> None:
    chat = client.files.create(file=("train.jsonl", chat_jsonl()), purpose="fine-tune")
    dpo_row = {
        "input": {"messages": [{"role": "user", "content": "hi"}]},
        "preferred_output": [{"role": "assistant", "content": "hello"}],
        "non_preferred_completion": [{"role": "assistant", "content": "go away"}],
    }
    dpo = client.files.create(file=("dpo.jsonl", (json.dumps(dpo_row) + "\n").encode() * 3), purpose="fine-tune")
    assert chat.status == dpo.status == "processed"


def test_list_pages_retrieve_delete(client: openai.OpenAI) -> None:
    ids = [client.files.create(file=(f"batch-{i}.jsonl", b'{"x": 1}\n'), purpose="user_data").id for i in range(7)]

    first_page = client.files.list(purpose="user_data", limit=3)
    assert [f.id for f in first_page.data] == ids[::-1][:3]  # newest first
    assert first_page.has_more is True
    everything = [f.id for f in client.files.list(purpose="user_data", limit=3)]  # auto-paging across 3 pages
    assert everything[:7] == ids[::-1]
    ascending = [f.id for f in client.files.list(purpose="user_data", order="asc", limit=2)]
    assert ascending[-7:] == ids

    got = client.files.retrieve(ids[0])
    assert got.filename == "batch-0.jsonl" and got.purpose == "user_data"
    deleted = client.files.delete(ids[0])
    assert deleted.deleted is True and deleted.id == ids[0]
    with pytest.raises(openai.NotFoundError) as err:
        client.files.retrieve(ids[0])
    assert err.value.body["param"] == "id" and ids[0] in err.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.files.content(ids[0])
    assert ids[0] not in [f.id for f in client.files.list(purpose="user_data")]
    assert client.files.retrieve(ids[1]).id == ids[1]  # the others are untouched


def test_expires_after_and_batch_default(client: openai.OpenAI) -> None:
    f = client.files.create(
        file=("e.jsonl", b"{}\n"), purpose="user_data", expires_after={"anchor": "created_at", "seconds": 3600}
    )
    assert f.expires_at == f.created_at + 3600
    b = client.files.create(file=("b.jsonl", b"{}\n"), purpose="batch")
    assert b.expires_at == b.created_at + 30 * 24 * 3600
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(
            file=("e.jsonl", b"{}\n"), purpose="user_data", expires_after={"anchor": "created_at", "seconds": 10}
        )
    assert err.value.body["param"] == "expires_after.seconds"


def test_files_are_private_to_their_organization(
    gateway: LiveGateway, client: openai.OpenAI, recorder: SpecRecorder
) -> None:
    mine = client.files.create(file=("mine.jsonl", chat_jsonl()), purpose="fine-tune")
    _, _, other_secret = gateway.new_org_key("someone-else")
    other = gateway.client(other_secret, recorder)
    for call in (other.files.retrieve, other.files.content, other.files.delete):
        with pytest.raises(openai.NotFoundError) as err:
            call(mine.id)
        assert err.value.body["message"] == f"No such File object: {mine.id}"
    assert mine.id not in [f.id for f in other.files.list()]
    assert client.files.retrieve(mine.id).id == mine.id  # still there for its owner


def test_every_response_was_checked_against_the_spec(client: openai.OpenAI, recorder: SpecRecorder) -> None:
    f = client.files.create(file=("x.jsonl", chat_jsonl()), purpose="fine-tune")
    client.files.list(limit=1)
    client.files.delete(f.id)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)
    assert recorder.checked == ["OpenAIFile", "ListFilesResponse", "DeleteFileResponse", "ErrorResponse"]
