"""Blobs in an S3-compatible object store (``blob_url = "s3://bucket/prefix"``), behind the same interface as the
local directory store (``storage.blobs.BlobStore``).

- Staging streams: ``stage()`` gives a blob whose bytes go up in multipart parts of ``s3.part_bytes`` as they
  arrive (one part buffered in memory, never the whole upload on local disk). A blob still smaller than one part
  when it is committed is written with one PutObject straight onto its key; a larger one is completed under
  ``<prefix>/staging/<uuid>`` and copied server-side onto its key. Either way the key appears whole or not at all,
  and the caller writes its database row only after ``commit`` returned (atomic visibility).
- Cleanup: ``discard`` aborts an unfinished multipart upload (its parts go) or deletes the staged object;
  ``sweep_staging`` aborts multipart uploads and deletes staged objects a crash left (older than an hour).
- ``open`` streams an object; ``open_range`` reads a byte range (the file content route's ``Range``).
- ``local_path`` materializes a blob (or a blob tree: an adapter, a checkpoint) into this host's cache under its
  key, once: keys are immutable (a key is written before any row names it and never rewritten after), so a cached
  copy is never stale. Training, export, evals and the format checker read these local copies; engines fetch the
  adapters they load the same way (``serving.adapter_fetch.FetchAdapters``). The copies are bounded: past
  ``s3.cache_max_bytes`` the least recently used go (``trim``; each copy's size and last use are an entry file in
  ``<cache>/entries``), except keys ``pinned`` by this process (adapters its engine has loaded); ``evict`` drops one
  (an engine host does when the adapter is unloaded; ``delete_prefix`` does on the host that deletes).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from storage.blobs import _KEY
from storage.settings import S3Settings

STAGING = "staging"


def s3_client(settings: S3Settings) -> Any:
    secret = settings.secret_access_key.get_secret_value() if settings.secret_access_key else None
    config = Config(
        s3={"addressing_style": settings.addressing_style},
        retries={"max_attempts": 5, "mode": "standard"},
        max_pool_connections=32,
        connect_timeout=5,
        read_timeout=60,
        # self-hosted stores differ in which of S3's newer flexible checksums they accept: only what S3 requires
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=secret,
        config=config,
    )


def parse_blob_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → ("bucket", "some/prefix")."""
    rest = url.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    return bucket, prefix.strip("/")


class S3StagedBlob:
    """A blob on its way into S3: buffered up to one part, then streamed in multipart parts (``write``); or a
    finished local file (``adopt``) uploaded at commit. ``discard`` (or leaving the ``with``) drops it."""

    def __init__(self, store: S3BlobStore, file: Path | None = None) -> None:
        self.store = store
        self.staging_key = f"{STAGING}/{uuid.uuid4().hex}"
        self.size = file.stat().st_size if file is not None else 0
        self.file = file
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._completed = False  # the staging object exists (multipart completed)
        self._done = False  # committed or discarded
        self.local_copy: Path | None = None  # a scratch file for the format checker (``staged_path``), removed with it

    @property
    def path(self) -> Path:
        raise TypeError("an S3 staged blob has no local path: use the store's staged_path()")

    def write(self, data: bytes) -> None:
        assert not self._done and not self._completed and self.file is None, "staged blob already closed"
        self._buffer += data
        self.size += len(data)
        part = self.store.settings.part_bytes
        while len(self._buffer) >= part:
            self._upload_part(bytes(self._buffer[:part]))
            del self._buffer[:part]

    def _upload_part(self, body: bytes) -> None:
        client, bucket = self.store.client, self.store.bucket
        if self._upload_id is None:
            self._upload_id = client.create_multipart_upload(Bucket=bucket, Key=self.store.full(self.staging_key))[
                "UploadId"
            ]
        number = len(self._parts) + 1
        etag = client.upload_part(
            Bucket=bucket, Key=self.store.full(self.staging_key), UploadId=self._upload_id, PartNumber=number, Body=body
        )["ETag"]
        self._parts.append({"PartNumber": number, "ETag": etag})

    @property
    def streamed(self) -> bool:
        """Parts have gone up (the blob is past one part): it commits by completing, then copying."""
        return self._upload_id is not None

    def close(self) -> None:
        """Finish a streamed upload under its staging key (a small blob stays in memory until ``commit``)."""
        if self._done or self._completed or self._upload_id is None:
            return
        if self._buffer:
            self._upload_part(bytes(self._buffer))
            self._buffer.clear()
        self.store.client.complete_multipart_upload(
            Bucket=self.store.bucket,
            Key=self.store.full(self.staging_key),
            UploadId=self._upload_id,
            MultipartUpload={"Parts": self._parts},
        )
        self._completed = True

    def body(self) -> bytes:
        return bytes(self._buffer)

    def discard(self) -> None:
        if self._done:
            return
        self._done = True
        client, bucket, key = self.store.client, self.store.bucket, self.store.full(self.staging_key)
        try:
            if self._completed:
                client.delete_object(Bucket=bucket, Key=key)
            elif self._upload_id is not None:
                client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=self._upload_id)
        finally:
            self._buffer.clear()
            for path in (self.file, self.local_copy):
                if path is not None:
                    path.unlink(missing_ok=True)

    def committed(self) -> None:
        self._done = True
        self._buffer.clear()
        if self.local_copy is not None:
            self.local_copy.unlink(missing_ok=True)

    def __enter__(self) -> S3StagedBlob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()  # a no-op once committed


class _Raw(io.RawIOBase):
    """botocore's StreamingBody as a raw file: its own iteration yields 1 KiB chunks, not lines, so callers get
    it wrapped in a BufferedReader and see an ordinary binary file."""

    def __init__(self, body: Any) -> None:
        self.body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self.body.close()
        super().close()


class S3BlobStore:
    def __init__(self, url: str, settings: S3Settings, cache_dir: Path, client: Any = None) -> None:
        self.bucket, self.prefix = parse_blob_url(url)
        self.url = url.rstrip("/")
        self.settings = settings
        self.client = client or s3_client(settings)
        self.cache = Path(cache_dir)
        self._sizes: dict[str, int] = {}
        self.objects = self.cache / "objects"
        self.scratch = self.cache / "staging"
        self.work = self.cache / "work"
        self.entries = self.cache / "entries"
        self.pinned: set[str] = set()  # local copies trim must leave (in use by this process)
        for folder in (self.objects, self.scratch, self.work, self.cache / "locks", self.entries):
            folder.mkdir(parents=True, exist_ok=True)

    # --- keys ----------------------------------------------------------------------------------------------
    def full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _check(self, key: str) -> str:
        key = key.rstrip("/")
        if not _KEY.match(key) or any(part in ("", ".", "..") for part in key.split("/")):
            raise ValueError(f"invalid blob key {key!r}")
        return key

    def _list(self, prefix: str) -> Iterator[dict[str, Any]]:
        yield from self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)

    def _objects_under(self, key: str) -> list[dict[str, Any]]:
        """The object at ``key`` itself, or every object of the tree ``key/``."""
        key = self._check(key)
        head = self._head(key)
        if head is not None:
            return [{"Key": self.full(key), "Size": head["ContentLength"], "LastModified": head["LastModified"]}]
        found: list[dict[str, Any]] = []
        for page in self._list(self.full(key) + "/"):
            found.extend(page.get("Contents", []))
        return found

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self.full(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    # --- writing ---------------------------------------------------------------------------------------------
    def stage(self) -> S3StagedBlob:
        return S3StagedBlob(self)

    def adopt(self, path: Path) -> S3StagedBlob:
        """A finished local file (a child wrote it under ``scratch``): uploaded at commit, then removed."""
        return S3StagedBlob(self, file=Path(path))

    def commit(self, staged: Any, key: str) -> None:
        key = self._check(key)
        if not isinstance(staged, S3StagedBlob):  # a local StagedBlob: its file goes up
            self._upload_file(Path(staged.path), key)
            staged.discard()
            return
        target = self.full(key)
        if staged.file is not None:
            self._upload_file(staged.file, key)
            staged.file.unlink(missing_ok=True)
        elif not staged.streamed:
            self.client.put_object(Bucket=self.bucket, Key=target, Body=staged.body())
        else:
            staged.close()
            source = {"Bucket": self.bucket, "Key": self.full(staged.staging_key)}
            self.client.copy(source, self.bucket, target, Config=self._transfer())  # multipart copy past 5 GiB
            self.client.delete_object(Bucket=self.bucket, Key=self.full(staged.staging_key))
        staged.committed()

    def _transfer(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        part = self.settings.part_bytes
        return TransferConfig(multipart_threshold=part, multipart_chunksize=part, max_concurrency=4)

    def _upload_file(self, path: Path, key: str) -> None:
        self.client.upload_file(str(path), self.bucket, self.full(key), Config=self._transfer())

    def commit_dir(self, source: Path, key: str, files: tuple[str, ...] | None = None) -> None:
        """A directory (or the named files of it) as the blob tree ``key/…``. Objects appear one by one: the
        tree is whole once this returns, and only then is a row naming it written (callers' rule)."""
        key = self._check(key)
        source = Path(source)
        paths = (
            [source / name for name in files]
            if files is not None
            else sorted(p for p in source.rglob("*") if p.is_file())
        )
        for path in paths:
            self._upload_file(path, f"{key}/{path.relative_to(source).as_posix()}")

    def delete_prefix(self, prefix: str) -> None:
        """One blob or a whole ``prefix/`` tree in the store, and this host's cached copy of it."""
        key = self._check(prefix)
        doomed = [{"Key": self.full(key)}]
        for page in self._list(self.full(key) + "/"):
            doomed.extend({"Key": o["Key"]} for o in page.get("Contents", []))
        for start in range(0, len(doomed), 1000):
            self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": doomed[start : start + 1000], "Quiet": True}
            )
        for known in [k for k in self._sizes if k == key or k.startswith(key + "/")]:
            del self._sizes[known]
        for entry, cached_key, _ in self._entries():
            if cached_key == key or cached_key.startswith(key + "/"):
                entry.unlink(missing_ok=True)
        self._remove_copy(key)

    # --- reading ---------------------------------------------------------------------------------------------
    def open(self, key: str) -> BinaryIO:
        """The object as a buffered binary file (read(n), readline, iteration by lines, with), streamed."""
        body = self.client.get_object(Bucket=self.bucket, Key=self.full(self._check(key)))["Body"]
        return cast(BinaryIO, io.BufferedReader(_Raw(body), buffer_size=1 << 20))

    def open_range(self, key: str, start: int, end: int) -> BinaryIO:
        """Bytes ``start``..``end`` inclusive (an HTTP range), read by the store: nothing else crosses the wire."""
        body = self.client.get_object(
            Bucket=self.bucket, Key=self.full(self._check(key)), Range=f"bytes={start}-{end}"
        )["Body"]
        return cast(BinaryIO, io.BufferedReader(_Raw(body), buffer_size=1 << 20))

    def read_bytes(self, key: str) -> bytes | None:
        try:
            with self.open(key) as body:
                return body.read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def exists(self, key: str) -> bool:
        return bool(self._objects_under(key))

    def size(self, key: str) -> int:
        """Bytes under ``key``; kept once known (keys are immutable: the storage quota asks for every adapter's
        size on each check, which would otherwise be a listing per adapter per upload)."""
        key = self._check(key)
        if key in self._sizes:
            return self._sizes[key]
        total = sum(int(o["Size"]) for o in self._objects_under(key))
        if total and len(self._sizes) < 100_000:
            self._sizes[key] = total
        return total

    def prefixes(self, top: str) -> Iterator[str]:
        """Immediate children of ``top`` that hold objects. Listed without a delimiter: some stores (SeaweedFS)
        keep a deleted tree's empty folders and would answer them as common prefixes."""
        top = self._check(top)
        base = self.full(top) + "/"
        seen: set[str] = set()
        for page in self._list(base):
            for obj in page.get("Contents", []):
                child = obj["Key"][len(base) :].split("/", 1)[0]
                if child and child not in seen:
                    seen.add(child)
                    yield f"{top}/{child}"

    def age_seconds(self, key: str) -> float:
        """Since the newest write under ``key`` (a tree ages from its last object, as a directory's mtime)."""
        found = self._objects_under(key)
        if not found:
            raise FileNotFoundError(key)
        return time.time() - max(o["LastModified"].timestamp() for o in found)

    # --- local copies ------------------------------------------------------------------------------------------
    def local_path(self, key: str) -> Path:
        """This host's copy of blob (or tree) ``key``, fetched once: the cache is keyed by the immutable key."""
        key = self._check(key)
        target = self.objects / key
        if target.exists():
            self._used(key)
            return target
        with open(self._lock_path(key), "w") as lock:  # one download per key per host, whichever process asks first
            fcntl.flock(lock, fcntl.LOCK_EX)
            if target.exists():
                self._used(key)
                return target
            found = self._objects_under(key)
            if not found:
                raise FileNotFoundError(f"blob {key!r} is not in {self.url}")
            tmp = self.scratch / f"{uuid.uuid4().hex}.fetch"
            try:
                single = len(found) == 1 and found[0]["Key"] == self.full(key)
                for obj in found:
                    rel = "" if single else obj["Key"][len(self.full(key)) + 1 :]
                    dest = tmp / rel if rel else tmp
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    self.client.download_file(self.bucket, obj["Key"], str(dest), Config=self._transfer())
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, target)
                self._used(key, sum(int(o["Size"]) for o in found))
            finally:
                if tmp.is_dir():
                    shutil.rmtree(tmp, ignore_errors=True)
                elif tmp.exists():
                    tmp.unlink()
        self.trim(keep=key)
        return target

    def trim(self, keep: str | None = None) -> int:
        """Drop local copies, least recently used first, until they fit ``s3.cache_max_bytes``; never ``keep``,
        a pinned key, or one whose fetch holds its lock. Returns how many went."""
        entries = sorted(self._entries(), key=lambda e: e[0].stat().st_mtime if e[0].exists() else 0.0)
        total = sum(size for _, _, size in entries)
        removed = 0
        for _, key, size in entries:
            if total <= self.settings.cache_max_bytes:
                break
            if key != keep and key not in self.pinned and self.evict(key, wait=False):
                total -= size
                removed += 1
        return removed

    def evict(self, key: str, *, wait: bool = True) -> bool:
        """Remove this host's copy of ``key`` (the store keeps the blob); False when ``wait`` is off and a fetch
        of it holds its lock."""
        key = self._check(key)
        with open(self._lock_path(key), "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                return False
            (self.entries / self._lock_path(key).name).unlink(missing_ok=True)
            self._remove_copy(key)
        return True

    def _lock_path(self, key: str) -> Path:
        return self.cache / "locks" / hashlib.sha256(key.encode()).hexdigest()[:32]

    def _remove_copy(self, key: str) -> None:
        cached = self.objects / key
        if cached.is_dir():
            shutil.rmtree(cached, ignore_errors=True)
        else:
            cached.unlink(missing_ok=True)

    def _used(self, key: str, size: int | None = None) -> None:
        """Note a use of ``key``'s copy (the entry's mtime), and its size when it was just fetched."""
        entry = self.entries / self._lock_path(key).name
        if size is not None or not entry.exists():
            if size is None:  # a copy made before entries were kept: measure it once
                target = self.objects / key
                files = [target] if target.is_file() else [p for p in target.rglob("*") if p.is_file()]
                size = sum(p.stat().st_size for p in files)
            entry.write_text(json.dumps({"key": key, "bytes": size}))
        else:
            with contextlib.suppress(FileNotFoundError):
                os.utime(entry)

    def _entries(self) -> list[tuple[Path, str, int]]:
        found = []
        for entry in self.entries.iterdir():
            try:
                data = json.loads(entry.read_text())
                found.append((entry, str(data["key"]), int(data["bytes"])))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # being written, or gone meanwhile
        return found

    def staged_path(self, staged: Any) -> Path:
        """A staged blob as a local scratch file (the format checker reads it three times): a copy fetched from
        the staging object (or the small blob's buffer), removed when the staged blob goes."""
        if not isinstance(staged, S3StagedBlob):
            staged.close()
            return Path(staged.path)
        if staged.file is not None:
            return staged.file
        if staged.local_copy is not None:
            return staged.local_copy
        path = staged.local_copy = self.scratch / f"{uuid.uuid4().hex}.check"
        if staged.streamed:
            staged.close()
            self.client.download_file(self.bucket, self.full(staged.staging_key), str(path), Config=self._transfer())
        else:
            path.write_bytes(staged.body())
        return path

    def work_dir(self, key: str) -> Path:
        """A claim's working directory: on this host's disk (trainer checkpoints are not shared through S3)."""
        return self.work / self._check(key)

    def engine_path(self, key: str) -> str:
        """What an engine is told to load: the blob's URL, fetched into the engine host's cache before loading."""
        return f"{self.url}/{self._check(key)}"

    def sweep_staging(self, older_than_s: float = 3600.0, uploads_older_than_s: float = 86400.0) -> int:
        """Abort multipart uploads and delete staged objects a crash left behind, and this host's stale scratch
        files. Returns how many went. A multipart upload is judged by when it began (S3 keeps no last-write time
        for it), so it gets a day: a slow upload still streaming after an hour is not cut off."""
        cutoff = time.time() - older_than_s
        uploads_cutoff = time.time() - uploads_older_than_s
        removed = 0
        staging = self.full(STAGING) + "/"
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=staging):
            for upload in page.get("Uploads", []):
                if upload["Initiated"].timestamp() < uploads_cutoff:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    removed += 1
        for page in self._list(staging):
            for obj in page.get("Contents", []):
                if obj["LastModified"].timestamp() < cutoff:
                    self.client.delete_object(Bucket=self.bucket, Key=obj["Key"])
                    removed += 1
        for part in self.scratch.iterdir():
            try:
                if part.stat().st_mtime < cutoff:
                    shutil.rmtree(part) if part.is_dir() else part.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed
