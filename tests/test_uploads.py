"""The Uploads API (``/v1/uploads``) through the real `openai` client against a live tunegate, SQLite and Postgres:
parts staged in the blob store, assembled in the order named (md5 checked), the result checked like any
``POST /v1/files`` upload; errors name their field; cancelled and expired Uploads leave no bytes behind; another
organization's Upload is a 404; the storage quota holds; a 1 GiB ``upload_file_chunked`` in bounded memory."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support import DATA, LiveGateway, SpecRecorder
from tests.upload_support import MIB, RssSampler, chat_examples, jsonl_body

BOUND_MIB = 300  # the same bound as a 512 MiB POST /v1/files (tests/test_upload_bounds.py)


def chat_jsonl(n: int = 12) -> bytes:
    return b"".join(e + b"\n" for e in chat_examples(n))


def staged(data_dir: Path) -> list[Path]:
    """Every Part still stored, and every staging file."""
    blobs = data_dir / "blobs"
    return sorted(
        p for p in [*(blobs / "objects" / "uploads").rglob("*"), *(blobs / "staging").glob("*")] if p.is_file()
    )


def start(
    client: openai.OpenAI,
    content: bytes,
    *,
    purpose: str = "fine-tune",
    filename: str = "train.jsonl",
    size: int | None = None,
):  # noqa: ANN201 - openai's Upload
    return client.uploads.create(
        bytes=len(content) if size is None else size, filename=filename, mime_type="text/jsonl", purpose=purpose
    )


@pytest.fixture(scope="module")
def tenant(gateway: LiveGateway) -> tuple[str, str]:
    org_id, _, secret = gateway.new_org_key("uploads-tenant")
    return org_id, secret


@pytest.fixture
def client(gateway: LiveGateway, tenant: tuple[str, str], recorder: SpecRecorder) -> openai.OpenAI:
    return gateway.client(tenant[1], recorder)


def test_upload_file_chunked_gives_a_checked_training_file(
    client: openai.OpenAI, gateway: LiveGateway, tenant, recorder: SpecRecorder, tmp_path: Path
) -> None:
    path = tmp_path / "alpaca_en_demo.json"
    path.write_bytes((DATA / "alpaca_en_demo.json").read_bytes())  # 840 KiB: 4 parts of 256 KiB
    original = path.read_bytes()
    upload = client.uploads.upload_file_chunked(
        file=path,
        mime_type="application/json",
        purpose="fine-tune",
        part_size=256 * 1024,
        md5=hashlib.md5(original).hexdigest(),
    )
    assert (upload.object, upload.status, upload.bytes, upload.filename) == (
        "upload",
        "completed",
        len(original),
        "alpaca_en_demo.json",
    )
    assert upload.expires_at == upload.created_at + 3600
    file = upload.file
    assert (file.purpose, file.status, file.bytes, file.filename) == (
        "fine-tune",
        "processed",
        len(original),
        "alpaca_en_demo.json",
    )
    assert client.files.retrieve(file.id).id == file.id
    assert client.files.content(file.id).content == original
    normalized = (
        httpx.get(
            f"{gateway.url}/v1/files/{file.id}/content",
            params={"format": "normalized"},
            headers={"authorization": f"Bearer {tenant[1]}"},
        )
        .raise_for_status()
        .text.splitlines()
    )
    assert len(normalized) == 999 and json.loads(normalized[0])["messages"][-1]["role"] == "assistant"
    assert recorder.checked.count("UploadPart") == 4 and "Upload" in recorder.checked
    assert staged(gateway.data_dir) == []  # the parts went once the File was stored


def test_parts_are_joined_in_the_order_named(client: openai.OpenAI) -> None:
    content = b"0123456789" * 1000
    upload = start(client, content, purpose="user_data", filename="notes.txt")
    assert upload.status == "pending" and upload.file is None
    second = client.uploads.parts.create(upload_id=upload.id, data=content[4000:])  # parts may come in any order
    first = client.uploads.parts.create(upload_id=upload.id, data=content[:4000])
    assert (first.object, first.upload_id) == ("upload.part", upload.id)
    done = client.uploads.complete(upload_id=upload.id, part_ids=[first.id, second.id])
    assert client.files.content(done.file.id).content == content
    assert done.file.expires_at is None


def test_the_file_takes_expires_after_and_a_plain_data_field_is_a_part(
    gateway: LiveGateway, client: openai.OpenAI, tenant
) -> None:
    upload = client.uploads.create(
        bytes=5,
        filename="b.jsonl",
        mime_type="text/jsonl",
        purpose="user_data",
        expires_after={"anchor": "created_at", "seconds": 7200},
    )
    part = (
        httpx.post(
            f"{gateway.url}/v1/uploads/{upload.id}/parts",
            files={"data": (None, b"hello")},
            headers={"authorization": f"Bearer {tenant[1]}"},
        )
        .raise_for_status()
        .json()
    )  # curl -F data=…
    done = client.uploads.complete(upload_id=upload.id, part_ids=[part["id"]])
    assert done.file.expires_at == done.file.created_at + 7200
    assert client.files.content(done.file.id).content == b"hello"


def test_a_bad_training_file_is_a_400_naming_its_line(client: openai.OpenAI, gateway: LiveGateway) -> None:
    lines = chat_jsonl(12).splitlines()
    lines[2] = b'{"messages": [{"role": "user", "content": "no answer"}]}'
    content = b"\n".join(lines) + b"\n"
    upload = start(client, content)
    part = client.uploads.parts.create(upload_id=upload.id, data=content)
    with pytest.raises(openai.BadRequestError) as err:
        client.uploads.complete(upload_id=upload.id, part_ids=[part.id])
    error = err.value.body
    assert (error["code"], error["param"]) == ("invalid_file_format", "file")
    assert "line 3" in error["message"] and "example_missing_assistant_message" in error["message"]
    assert all(
        f.filename != "train.jsonl" or f.purpose != "fine-tune" or f.bytes != len(content) for f in client.files.list()
    )  # no File was made
    client.uploads.cancel(upload_id=upload.id)
    assert staged(gateway.data_dir) == []


def test_md5_bytes_and_part_ids_are_checked(client: openai.OpenAI) -> None:
    content = chat_jsonl(12)
    upload = start(client, content)
    a = client.uploads.parts.create(upload_id=upload.id, data=content[:100])
    b = client.uploads.parts.create(upload_id=upload.id, data=content[100:])
    cases = [
        ({"part_ids": [a.id]}, "bytes", "bytes_mismatch"),
        ({"part_ids": [a.id, b.id, "part_nope"]}, "part_ids", "invalid_value"),
        ({"part_ids": [a.id, a.id, b.id]}, "part_ids", "invalid_value"),
        ({"part_ids": [a.id, b.id], "md5": hashlib.md5(b"other").hexdigest()}, "md5", "md5_mismatch"),
        ({"part_ids": [b.id, a.id]}, "file", "invalid_file_format"),  # the wrong order does not parse
    ]
    for body, param, code in cases:
        with pytest.raises(openai.BadRequestError) as err:
            client.uploads.complete(upload_id=upload.id, **body)
        assert (err.value.body["param"], err.value.body["code"]) == (param, code), (body, err.value.body)
    with pytest.raises(openai.BadRequestError) as err:  # the Parts already hold the declared bytes
        client.uploads.parts.create(upload_id=upload.id, data=b"x")
    assert (err.value.body["param"], err.value.body["code"]) == ("data", "upload_too_large")
    done = client.uploads.complete(upload_id=upload.id, part_ids=[a.id, b.id], md5=hashlib.md5(content).hexdigest())
    assert done.status == "completed" and done.file.status == "processed"
    for call in (
        lambda: client.uploads.parts.create(upload_id=upload.id, data=b"x"),
        lambda: client.uploads.complete(upload_id=upload.id, part_ids=[a.id, b.id]),
        lambda: client.uploads.cancel(upload_id=upload.id),
    ):
        with pytest.raises(openai.BadRequestError) as err:
            call()
        assert err.value.body["param"] == "upload_id" and "is completed" in err.value.body["message"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"purpose": "nonsense"}, "purpose"),
        ({"mime_type": "image/png"}, "mime_type"),
        ({"bytes": 9 * 1024**3}, "bytes"),
        ({"bytes": 0}, "bytes"),
        ({"bytes": "12"}, "bytes"),
        ({"filename": "../etc/passwd"}, "filename"),
        ({"filename": None}, "filename"),
        ({"expires_after": {"anchor": "created_at", "seconds": 10}}, "expires_after.seconds"),
    ],
)
def test_create_errors_name_the_field(gateway: LiveGateway, tenant, fields: dict, param: str) -> None:
    body = {"bytes": 100, "filename": "t.jsonl", "mime_type": "text/jsonl", "purpose": "fine-tune"} | fields
    r = httpx.post(
        f"{gateway.url}/v1/uploads",
        json={k: v for k, v in body.items() if v is not None},
        headers={"authorization": f"Bearer {tenant[1]}"},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_cancel_leaves_no_staged_bytes(client: openai.OpenAI, gateway: LiveGateway) -> None:
    content = chat_jsonl(20)
    upload = start(client, content)
    client.uploads.parts.create(upload_id=upload.id, data=content[:1000])
    assert len(staged(gateway.data_dir)) == 1
    cancelled = client.uploads.cancel(upload_id=upload.id)
    assert (cancelled.status, cancelled.file) == ("cancelled", None)
    assert staged(gateway.data_dir) == []
    with pytest.raises(openai.BadRequestError) as err:
        client.uploads.parts.create(upload_id=upload.id, data=content[1000:])
    assert "is cancelled" in err.value.body["message"] and staged(gateway.data_dir) == []


def test_another_organizations_upload_is_not_found(
    gateway: LiveGateway, client: openai.OpenAI, recorder: SpecRecorder
) -> None:
    content = chat_jsonl(12)
    upload = start(client, content)
    part = client.uploads.parts.create(upload_id=upload.id, data=content)
    other = gateway.client(gateway.new_org_key("upload-snoop")[2], recorder)
    for call in (
        lambda: other.uploads.parts.create(upload_id=upload.id, data=b"x"),
        lambda: other.uploads.complete(upload_id=upload.id, part_ids=[part.id]),
        lambda: other.uploads.cancel(upload_id=upload.id),
    ):
        with pytest.raises(openai.NotFoundError) as err:
            call()
        assert err.value.body["message"] == f"No such Upload object: {upload.id}"
    assert client.uploads.complete(upload_id=upload.id, part_ids=[part.id]).status == "completed"


def test_an_upload_respects_the_storage_quota(gateway: LiveGateway, recorder: SpecRecorder) -> None:
    org_id, _, secret = gateway.new_org_key("upload-quota")
    with gateway.admin() as admin:
        admin.put(f"/admin/organizations/{org_id}/limits", json={"storage_bytes": 10_000}).raise_for_status()
    client = gateway.client(secret, recorder)
    with pytest.raises(openai.PermissionDeniedError) as err:
        client.uploads.create(bytes=20_000, filename="big.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    assert (err.value.body["code"], err.value.body["param"]) == ("storage_quota_exceeded", "storage_bytes")
    first = client.uploads.create(bytes=6_000, filename="a.jsonl", mime_type="text/jsonl", purpose="user_data")
    with pytest.raises(openai.PermissionDeniedError):  # a pending Upload's announced bytes count
        client.uploads.create(bytes=6_000, filename="b.jsonl", mime_type="text/jsonl", purpose="user_data")
    client.uploads.cancel(upload_id=first.id)
    assert client.uploads.create(bytes=6_000, filename="b.jsonl", mime_type="text/jsonl", purpose="user_data")


# --- expiry, part size: a gateway whose Uploads live two seconds ------------------------------------------------
@pytest.fixture(scope="module")
def short_lived(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    data_dir = tmp_path_factory.mktemp("uploads-expiry")
    gw = LiveGateway(
        data_dir,
        f"sqlite:///{data_dir / 'db.sqlite'}",
        TUNEGATE_UPLOADS__EXPIRES_AFTER_SECONDS="2",
        TUNEGATE_EXPIRY_SWEEP_SECONDS="0.3",
        TUNEGATE_UPLOADS__MAX_PART_BYTES="4096",
    )
    gw.start()
    yield gw
    gw.stop()


def test_an_expired_upload_is_swept(short_lived: LiveGateway, recorder: SpecRecorder) -> None:
    client = short_lived.client(short_lived.new_org_key("expiry")[2], recorder)
    content = chat_jsonl(2)
    upload = start(client, content)
    part = client.uploads.parts.create(upload_id=upload.id, data=content[:2000])
    assert upload.expires_at == upload.created_at + 2 and len(staged(short_lived.data_dir)) == 1
    deadline = time.monotonic() + 10
    while staged(short_lived.data_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert staged(short_lived.data_dir) == []  # swept, not merely refused
    with pytest.raises(openai.BadRequestError) as err:
        client.uploads.complete(upload_id=upload.id, part_ids=[part.id])
    assert "is expired" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        client.uploads.cancel(upload_id=upload.id)


def test_a_part_over_the_limit_is_refused(short_lived: LiveGateway, recorder: SpecRecorder) -> None:
    client = short_lived.client(short_lived.new_org_key("part-size")[2], recorder)
    upload = start(client, b"x" * 10_000, purpose="user_data")
    with pytest.raises(openai.APIStatusError) as err:
        client.uploads.parts.create(upload_id=upload.id, data=b"x" * 5000)
    assert err.value.status_code == 413 and err.value.body["param"] == "data"
    assert staged(short_lived.data_dir) == []


# --- 1 GiB through upload_file_chunked, the gateway's memory sampled --------------------------------------------
@pytest.fixture(scope="module")
def big_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    data_dir = tmp_path_factory.mktemp("uploads-1gib")
    gw = LiveGateway(data_dir, f"sqlite:///{data_dir / 'db.sqlite'}")
    gw.start()
    yield gw
    gw.stop()


@pytest.mark.slow
def test_1_gib_upload_file_chunked_in_bounded_memory(big_gateway: LiveGateway, tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    digest = hashlib.md5()
    with path.open("wb") as fh:
        for block in jsonl_body(1024 * MIB):
            fh.write(block)
            digest.update(block)
    # completing joins and validates the whole GiB in one request: over the default 60 s on a slow box (no AVX-512)
    client = big_gateway.client(big_gateway.new_org_key("big")[2]).with_options(timeout=600)
    client.uploads.upload_file_chunked(
        file=chat_jsonl(12),
        filename="warm.jsonl",
        bytes=len(chat_jsonl(12)),
        mime_type="text/jsonl",
        purpose="fine-tune",
    )  # the first upload's imports
    started = time.monotonic()
    with RssSampler(big_gateway.proc.pid) as sampler:
        upload = client.uploads.upload_file_chunked(
            file=path, mime_type="text/jsonl", purpose="fine-tune", md5=digest.hexdigest()
        )
    seconds = time.monotonic() - started
    assert upload.status == "completed" and upload.file.status == "processed"
    assert upload.file.bytes == path.stat().st_size > 1000 * MIB
    peak = sampler.result
    print(
        f"\n1 GiB upload_file_chunked: {seconds:.1f} s, idle {peak.idle_mib:.0f} MiB, peak {peak.peak_mib:.0f} MiB, "
        f"growth {peak.growth_mib:.0f} MiB"
    )
    assert peak.growth_mib < BOUND_MIB, f"a 1 GiB Upload grew the gateway by {peak.growth_mib:.0f} MiB"
    assert staged(big_gateway.data_dir) == []
    client.files.delete(upload.file.id)
