"""The S3 blob store (storage/s3blobs.py) against a real S3-compatible server process (SeaweedFS, tests/s3_support.py):
streamed multipart staging, atomic visibility, aborts and sweeps, range reads, local copies by immutable key, the
engine-side fetch; then the gateway with ``blob_url = s3://…``: uploads, content ranges, tenant isolation."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from storage.s3blobs import S3BlobStore
from storage.settings import S3Settings
from tests.s3_support import BUCKET, S3Server

MIB = 1 << 20


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory):
    server = S3Server.start(tmp_path_factory.mktemp("weed"))
    yield server
    server.stop()


@pytest.fixture()
def store(s3: S3Server, tmp_path: Path) -> S3BlobStore:
    prefix = f"unit-{os.urandom(4).hex()}"
    return S3BlobStore(f"s3://{BUCKET}/{prefix}", S3Settings(**s3.s3_settings()), tmp_path / "cache")


def _keys(s3: S3Server, prefix: str) -> list[str]:
    return s3.keys(prefix)


def _uploads(s3: S3Server, prefix: str) -> list[str]:
    return [u["Key"] for u in s3.client().list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", [])]


def test_small_blob_is_one_put_straight_onto_its_key(s3: S3Server, store: S3BlobStore) -> None:
    with store.stage() as staged:
        staged.write(b"hello ")
        staged.write(b"world")
        assert not staged.streamed and _keys(s3, store.prefix) == []  # nothing visible before commit
        store.commit(staged, "files/file-1/original")
    assert _keys(s3, store.prefix) == [f"{store.prefix}/files/file-1/original"]  # no staging object left
    with store.open("files/file-1/original") as fh:
        assert fh.read() == b"hello world"
    with store.stage() as staged:
        staged.write(b"one\ntwo\n\nthree")
        store.commit(staged, "files/lines/original")
    with store.open("files/lines/original") as fh:  # an ordinary binary file: iterated by lines (batch input)
        assert list(fh) == [b"one\n", b"two\n", b"\n", b"three"]
    assert store.exists("files/file-1/original") and store.size("files/file-1/original") == 11
    assert store.read_bytes("files/missing") is None


def test_large_blob_streams_in_parts_and_appears_whole_at_commit(s3: S3Server, store: S3BlobStore) -> None:
    chunk = os.urandom(MIB)
    digest = hashlib.sha256()
    with store.stage() as staged:
        for _ in range(12):  # 12 MiB: two 5 MiB parts go up while writing, the rest with the commit
            staged.write(chunk)
            digest.update(chunk)
        assert staged.streamed and len(staged._parts) == 2  # streamed as it came, not buffered whole
        assert len(staged._buffer) < 5 * MIB
        assert _uploads(s3, store.prefix) and not store.exists("files/big/original")
        store.commit(staged, "files/big/original")
    assert _keys(s3, store.prefix) == [f"{store.prefix}/files/big/original"]
    assert _uploads(s3, store.prefix) == []
    got = hashlib.sha256()
    with store.open("files/big/original") as fh:
        while block := fh.read(MIB):
            got.update(block)
    assert got.hexdigest() == digest.hexdigest() and store.size("files/big/original") == 12 * MIB


def test_discard_aborts_the_multipart_upload_and_leaves_nothing(s3: S3Server, store: S3BlobStore) -> None:
    with store.stage() as staged:
        staged.write(os.urandom(6 * MIB))
        assert _uploads(s3, store.prefix)
    assert _uploads(s3, store.prefix) == [] and _keys(s3, store.prefix) == []
    with store.stage() as staged:  # completed under staging, then dropped: the staged object goes
        staged.write(os.urandom(6 * MIB))
        staged.close()
        assert len(_keys(s3, f"{store.prefix}/staging/")) == 1
    assert _keys(s3, store.prefix) == []


def test_sweep_removes_what_a_crash_left_in_staging(s3: S3Server, store: S3BlobStore) -> None:
    crashed = store.stage()
    crashed.write(os.urandom(6 * MIB))  # a multipart upload begun, never finished nor aborted
    done = store.stage()
    done.write(os.urandom(6 * MIB))
    done.close()  # a completed staging object nobody committed
    (store.scratch / "left.check").write_bytes(b"x")
    assert store.sweep_staging(older_than_s=3600) == 0  # young: may belong to a live upload
    time.sleep(1.1)
    assert store.sweep_staging(older_than_s=1) == 2  # the staged object and the scratch file
    assert _uploads(s3, store.prefix), "a multipart upload gets a day: it may still be streaming"
    assert store.sweep_staging(older_than_s=1, uploads_older_than_s=1) == 1
    assert _uploads(s3, store.prefix) == [] and _keys(s3, store.prefix) == []
    assert list(store.scratch.iterdir()) == []


def test_range_reads_fetch_only_the_range(store: S3BlobStore) -> None:
    data = bytes(range(256)) * 40
    with store.stage() as staged:
        staged.write(data)
        store.commit(staged, "files/r/original")
    with store.open_range("files/r/original", 100, 199) as fh:
        assert fh.read() == data[100:200]
    with store.open_range("files/r/original", len(data) - 5, len(data) - 1) as fh:
        assert fh.read() == data[-5:]


def test_trees_prefixes_ages_and_delete(store: S3BlobStore, tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8}))
    (adapter / "adapter_model.safetensors").write_bytes(os.urandom(1000))
    (adapter / "junk.txt").write_text("not listed")
    store.commit_dir(adapter, "models/job-1/c1/final", ("adapter_config.json", "adapter_model.safetensors"))
    store.commit_dir(adapter, "models/job-2/c1/final")
    assert sorted(store.prefixes("models")) == ["models/job-1", "models/job-2"]
    assert store.size("models/job-1/c1/final") == 1000 + len(json.dumps({"r": 8}))
    assert 0 <= store.age_seconds("models/job-1") < 60
    assert json.loads(store.read_bytes("models/job-1/c1/final/adapter_config.json") or b"") == {"r": 8}
    store.delete_prefix("models/job-1")
    assert list(store.prefixes("models")) == ["models/job-2"] and not store.exists("models/job-1/c1/final")
    with pytest.raises(ValueError):
        store.local_path("../etc")


def test_local_copies_are_fetched_once_by_immutable_key(s3: S3Server, store: S3BlobStore, tmp_path: Path) -> None:
    adapter = tmp_path / "a"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"w" * 100)
    store.commit_dir(adapter, "models/j/c/final")
    with store.stage() as staged:
        staged.write(b'{"messages": []}\n')
        store.commit(staged, "files/f/normalized.jsonl")
    tree = store.local_path("models/j/c/final")
    assert sorted(p.name for p in tree.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    one = store.local_path("files/f/normalized.jsonl")
    assert one.read_bytes() == b'{"messages": []}\n'
    s3.client().delete_object(Bucket=BUCKET, Key=f"{store.prefix}/files/f/normalized.jsonl")
    assert store.local_path("files/f/normalized.jsonl") == one  # from the cache: no second fetch
    with pytest.raises(FileNotFoundError):
        store.local_path("files/none")
    assert store.engine_path("models/j/c/final") == f"s3://{BUCKET}/{store.prefix}/models/j/c/final"


def test_local_copies_are_trimmed_least_recently_used_first_and_pinned_ones_stay(s3: S3Server, tmp_path: Path) -> None:
    settings = S3Settings(**{**s3.s3_settings(), "cache_max_bytes": 250})
    store = S3BlobStore(f"s3://{BUCKET}/trim-{os.urandom(4).hex()}", settings, tmp_path / "cache")
    for name in "abcd":
        with store.stage() as staged:
            staged.write(name.encode() * 100)
            store.commit(staged, f"files/{name}")
    a, b = store.local_path("files/a"), store.local_path("files/b")
    store.pinned.add("files/a")  # e.g. an adapter the engine holds
    old = time.time() - 60
    for entry in store.entries.iterdir():
        os.utime(entry, (old, old))  # both used a minute ago
    store.local_path("files/b")  # b used again just now: a is the least recently used, but pinned
    c = store.local_path("files/c")  # 300 bytes > 250: one must go — not a (pinned), not c (just fetched)
    assert a.exists() and c.exists() and not b.exists()
    store.pinned.clear()
    store.local_path("files/d")
    assert not a.exists() and c.exists() and store.local_path("files/d").read_bytes() == b"d" * 100
    assert store.evict("files/c") and not c.exists()
    assert store.local_path("files/c").read_bytes() == b"c" * 100, "an evicted copy is fetched again"
    store.delete_prefix("files/c")
    assert sorted(e[1] for e in store._entries()) == ["files/d"], "a deleted blob's copy and entry go with it"


def test_staged_path_gives_the_checker_a_scratch_copy_removed_with_the_blob(store: S3BlobStore) -> None:
    for size in (100, 6 * MIB):  # in memory still, and streamed
        with store.stage() as staged:
            data = os.urandom(size)
            staged.write(data)
            path = store.staged_path(staged)
            assert path.read_bytes() == data and path.parent == store.scratch
        assert not path.exists()


def test_adopted_file_is_uploaded_at_commit_and_removed(store: S3BlobStore) -> None:
    path = store.scratch / "normalized.part"
    path.write_bytes(b"line\n" * 1000)
    staged = store.adopt(path)
    assert staged.size == 5000
    store.commit(staged, "files/a/normalized.jsonl")
    assert not path.exists() and store.read_bytes("files/a/normalized.jsonl") == b"line\n" * 1000


def test_the_secret_stays_out_of_dumps_but_reaches_child_settings(s3: S3Server, tmp_path: Path) -> None:
    from storage.settings import Settings

    settings = Settings(data_dir=tmp_path, **s3.settings())
    assert "tunegate-test-secret" not in repr(settings) and "tunegate-test-secret" not in settings.model_dump_json()
    child = Settings.model_validate_json(settings.write_for_child("t", database=False).read_text())
    assert child.s3.secret_access_key is not None
    assert child.s3.secret_access_key.get_secret_value() == s3.s3_settings()["secret_access_key"]
    assert oct(settings.write_for_child("t").stat().st_mode & 0o777) == "0o600"


# --- the gateway with blob_url = s3://… (in process: Litestar's TestClient, real HTTP semantics) ----------------

ADMIN = "sk-admin-s3-test"


@pytest.fixture(scope="module")
def s3_app(s3: S3Server, tmp_path_factory: pytest.TempPathFactory):
    from litestar.testing import TestClient

    from gateway.app import create_app
    from storage.settings import Settings

    data_dir = tmp_path_factory.mktemp("gw-s3")
    settings = Settings(
        data_dir=data_dir,
        admin_key=ADMIN,
        worker={"embedded": False},
        serving={"local_engines": False},
        **s3.settings("gateway"),
    )
    with TestClient(create_app(settings, on_admin_key=lambda _: None)) as client:
        client.data_dir = data_dir  # type: ignore[attr-defined]
        yield client


def _org_key(client, name: str) -> dict[str, str]:  # noqa: ANN001
    admin = {"authorization": f"Bearer {ADMIN}"}
    org = client.post("/admin/organizations", json={"name": name}, headers=admin).json()
    key = client.post(f"/admin/organizations/{org['id']}/keys", json={"name": "t"}, headers=admin).json()
    return {"authorization": f"Bearer {key['secret']}"}


def _objects(s3: S3Server, prefix: str) -> list[str]:
    return [k.removeprefix("gateway/") for k in _keys(s3, f"gateway/{prefix}")]


def test_gateway_stores_uploads_in_s3_and_serves_ranges(s3: S3Server, s3_app, spec) -> None:  # noqa: ANN001
    from tests.finetune_support import chat_jsonl, qa_pairs

    a, b = _org_key(s3_app, "s3-a"), _org_key(s3_app, "s3-b")
    content = chat_jsonl(qa_pairs(20))
    created = s3_app.post(
        "/v1/files",
        headers=a,
        data={"purpose": "fine-tune"},
        files={"file": ("train.jsonl", content, "application/jsonl")},
    )
    assert created.status_code == 200, created.text
    assert spec.errors("OpenAIFile", created.json()) == []
    file_id = created.json()["id"]
    assert _objects(s3, f"files/{file_id}/") == [f"files/{file_id}/normalized.jsonl", f"files/{file_id}/original"]
    local = s3_app.data_dir / "blobs" / "objects"
    assert not local.exists() or not any(p.is_file() for p in local.rglob("*")), "nothing in a local blob store"
    assert list((s3_app.data_dir / "blob-cache" / "staging").iterdir()) == [], "the checker's copies are gone"
    whole = s3_app.get(f"/v1/files/{file_id}/content", headers=a)
    assert whole.content == content and whole.headers["accept-ranges"] == "bytes"
    normalized = s3_app.get(f"/v1/files/{file_id}/content", headers=a, params={"format": "normalized"})
    assert normalized.status_code == 200 and normalized.content.count(b"\n") == 20
    part = s3_app.get(f"/v1/files/{file_id}/content", headers={**a, "range": "bytes=10-29"})
    assert part.status_code == 206 and part.content == content[10:30]
    assert part.headers["content-range"] == f"bytes 10-29/{len(content)}"
    tail = s3_app.get(f"/v1/files/{file_id}/content", headers={**a, "range": "bytes=-7"})
    assert tail.status_code == 206 and tail.content == content[-7:]
    beyond = s3_app.get(f"/v1/files/{file_id}/content", headers={**a, "range": f"bytes={len(content)}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(content)}"
    assert beyond.json()["error"]["code"] == "range_not_satisfiable"
    assert s3_app.get(f"/v1/files/{file_id}/content", headers=b).status_code == 404, "another org's: not found"
    assert s3_app.get(f"/v1/files/{file_id}/content", headers={**b, "range": "bytes=0-3"}).status_code == 404
    bad = chat_jsonl(qa_pairs(3)) + b"{not json\n"
    refused = s3_app.post(
        "/v1/files", headers=a, data={"purpose": "fine-tune"}, files={"file": ("bad.jsonl", bad, "application/jsonl")}
    )
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "file"
    big = os.urandom(6 * MIB)  # past one part: streamed in multipart, committed by a server-side copy
    stored = s3_app.post(
        "/v1/files", headers=a, data={"purpose": "batch"}, files={"file": ("big.bin", big, "application/octet-stream")}
    )
    assert stored.status_code == 200, stored.text
    big_id = stored.json()["id"]
    assert (
        s3_app.get(f"/v1/files/{big_id}/content", headers={**a, "range": "bytes=5242870-5242889"}).content
        == big[5242870:5242890]
    )
    for gone in (file_id, big_id):
        assert s3_app.delete(f"/v1/files/{gone}", headers=a).json()["deleted"] is True
        assert _objects(s3, f"files/{gone}/") == []
    assert _objects(s3, "files/") == [] and _objects(s3, "staging/") == [] and _uploads(s3, "gateway/") == []


def test_uploads_api_parts_live_in_s3_until_completed(s3: S3Server, s3_app) -> None:  # noqa: ANN001
    from tests.finetune_support import chat_jsonl, qa_pairs

    a = _org_key(s3_app, "s3-uploads")
    content = chat_jsonl(qa_pairs(20))
    upload = s3_app.post(
        "/v1/uploads",
        headers=a,
        json={
            "bytes": len(content),
            "filename": "train.jsonl",
            "mime_type": "application/jsonl",
            "purpose": "fine-tune",
        },
    ).json()
    half = len(content) // 2
    parts = [
        s3_app.post(
            f"/v1/uploads/{upload['id']}/parts", headers=a, files={"data": ("blob", chunk, "application/octet-stream")}
        ).json()["id"]
        for chunk in (content[:half], content[half:])
    ]
    assert len(_objects(s3, f"uploads/{upload['id']}/")) == 2
    done = s3_app.post(f"/v1/uploads/{upload['id']}/complete", headers=a, json={"part_ids": parts}).json()
    assert done["status"] == "completed", done
    assert s3_app.get(f"/v1/files/{done['file']['id']}/content", headers=a).content == content
    assert _objects(s3, f"uploads/{upload['id']}/") == [], "the parts go once the file is stored"
    cancelled = s3_app.post(
        "/v1/uploads",
        headers=a,
        json={"bytes": 10, "filename": "x.jsonl", "mime_type": "application/jsonl", "purpose": "fine-tune"},
    ).json()
    s3_app.post(
        f"/v1/uploads/{cancelled['id']}/parts", headers=a, files={"data": ("blob", b"0123456789", "text/plain")}
    )
    assert len(_objects(s3, f"uploads/{cancelled['id']}/")) == 1
    assert s3_app.post(f"/v1/uploads/{cancelled['id']}/cancel", headers=a).json()["status"] == "cancelled"
    assert _objects(s3, f"uploads/{cancelled['id']}/") == []


def test_engine_side_fetch_rewrites_the_load_to_its_own_cached_copy(s3: S3Server, tmp_path: Path) -> None:
    """serving/adapter_fetch.FetchAdapters as vLLM runs it (an ASGI middleware), over a stand-in for vLLM's app."""
    import asyncio

    from serving.adapter_fetch import SETTINGS_VAR, FetchAdapters
    from serving.engine_api import UNLOAD_PATH
    from storage.settings import Settings

    engine_dir = tmp_path / "engine-host"
    settings = Settings(data_dir=engine_dir, **s3.settings("fetch"))
    writer = S3BlobStore(settings.blob_url or "", settings.s3, tmp_path / "writer-cache")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    writer.commit_dir(adapter, "models/j/c/final")
    seen: list[dict] = []

    async def vllm(scope: dict, receive, send) -> None:  # noqa: ANN001
        seen.append(json.loads((await receive())["body"]))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"Success"})

    async def call(app: FetchAdapters, body: dict, path: str = "/v1/load_lora_adapter") -> int:
        raw = json.dumps(body).encode()
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": raw, "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        await app(
            {"type": "http", "method": "POST", "path": path, "headers": [(b"content-length", str(len(raw)).encode())]},
            receive,
            send,
        )
        return sent[0]["status"]

    os.environ[SETTINGS_VAR] = str(settings.write_for_child("engine", database=False))
    try:
        app = FetchAdapters(vllm)
    finally:
        del os.environ[SETTINGS_VAR]
    url = f"{settings.blob_url}/models/j/c/final"
    assert asyncio.run(call(app, {"lora_name": "models/j/c/final", "lora_path": url})) == 200
    local = engine_dir.resolve() / "blob-cache" / "objects" / "models/j/c/final"
    assert seen[-1] == {"lora_name": "models/j/c/final", "lora_path": str(local)}
    assert (local / "adapter_config.json").read_text() == '{"r": 8}'
    assert app.store is not None and "models/j/c/final" in app.store.pinned, "trim leaves what vLLM holds"
    assert asyncio.run(call(app, {"lora_name": "models/j/c/final"}, UNLOAD_PATH)) == 200
    assert not local.exists() and not app.store.pinned, "an unloaded adapter leaves the engine host"
    assert asyncio.run(call(app, {"lora_name": "x", "lora_path": f"{settings.blob_url}/models/none"})) == 404
    assert asyncio.run(call(app, {"lora_name": "y", "lora_path": "/some/local/dir"})) == 200
    assert seen[-1]["lora_path"] == "/some/local/dir", "a plain path goes to vLLM untouched"
    assert len(seen) == 3
