"""Blob store: an interface and its local-directory implementation.

Writes are atomic: bytes go to a staging file, are fsynced, and only then renamed onto their key, so a
crash mid-write leaves a stray staging file (swept on start) and never a half blob under a real key.
Keys are made by tunegate (``files/<id>/original``), never from user input.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, cast

if TYPE_CHECKING:
    from storage.settings import Settings

_KEY = re.compile(r"^[A-Za-z0-9_\-.]+(/[A-Za-z0-9_\-.:]+)*$")


class StagedBlob:
    """A blob being written. ``commit`` moves it onto a key; ``discard`` (or leaving the ``with``) drops it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self._fh: BinaryIO | None = open(path, "wb")  # noqa: SIM115 - closed in close()

    def write(self, data: bytes) -> None:
        assert self._fh is not None, "staged blob already closed"
        self._fh.write(data)
        self.size += len(data)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None

    def discard(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self.path.unlink(missing_ok=True)

    @classmethod
    def adopt(cls, path: Path) -> StagedBlob:
        """A finished file already in the staging area (written by a tool, not through ``write``)."""
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        blob = cls.__new__(cls)
        blob.path, blob.size, blob._fh = Path(path), Path(path).stat().st_size, None
        return blob

    def __enter__(self) -> StagedBlob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()  # a no-op once committed (the path has moved)


class BlobStore(Protocol):
    """What every store does. ``local_path`` is the one way to a filesystem path (training, export, the format
    checker need files): the local store's own file; S3's copy in this host's cache, fetched once per immutable key."""

    scratch: Path  # local files a child writes before they are staged (``adopt``)

    def stage(self) -> Any: ...
    def adopt(self, path: Path) -> Any: ...
    def commit(self, staged: Any, key: str) -> None: ...
    def open(self, key: str) -> BinaryIO: ...
    def open_range(self, key: str, start: int, end: int) -> BinaryIO: ...
    def read_bytes(self, key: str) -> bytes | None: ...
    def size(self, key: str) -> int: ...
    def local_path(self, key: str) -> Path: ...
    def staged_path(self, staged: Any) -> Path: ...
    def work_dir(self, key: str) -> Path: ...
    def engine_path(self, key: str) -> str | None: ...
    def commit_dir(self, source: Path, key: str, files: tuple[str, ...] | None = None) -> None: ...
    def exists(self, key: str) -> bool: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def prefixes(self, top: str) -> Iterator[str]: ...
    def age_seconds(self, key: str) -> float: ...
    def sweep_staging(self, older_than_s: float = 3600.0) -> int: ...


def make_blob_store(settings: Settings) -> BlobStore:
    """The store the settings name: S3 for ``blob_url = "s3://…"``, else the local directory."""
    if settings.blob_url:
        from storage.s3blobs import S3BlobStore  # boto3 only where S3 is used

        return S3BlobStore(settings.blob_url, settings.s3, settings.blob_cache_dir)
    return LocalBlobStore(settings.resolved_blob_dir)


class LocalBlobStore:
    """Blobs as files under ``root/objects``; staging under ``root/staging`` on the same filesystem."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.staging = self.root / "staging"
        self.scratch = self.staging
        self.objects.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if not _KEY.match(key) or any(part in ("", ".", "..") for part in key.split("/")):
            raise ValueError(f"invalid blob key {key!r}")
        return self.objects / key

    def stage(self) -> StagedBlob:
        return StagedBlob(self.staging / f"{uuid.uuid4().hex}.part")

    def commit(self, staged: StagedBlob, key: str) -> None:
        staged.close()
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.path, target)
        _fsync_dir(target.parent)

    def commit_dir(self, source: Path, key: str, files: tuple[str, ...] | None = None) -> None:
        """Copy a directory (or the named files of it) in as an immutable blob tree, atomically."""
        target = self._path(key)
        staged = self.staging / f"{uuid.uuid4().hex}.dir"
        if files is None:
            shutil.copytree(source, staged)
        else:
            staged.mkdir()
            for name in files:
                shutil.copy2(source / name, staged / name)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, target)
        _fsync_dir(target.parent)

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")  # noqa: SIM115 - caller owns it

    def open_range(self, key: str, start: int, end: int) -> BinaryIO:
        """Bytes ``start``..``end`` (inclusive, as HTTP ranges count) of a blob."""
        fh = open(self._path(key), "rb")  # noqa: SIM115 - caller owns it
        fh.seek(start)
        return cast(BinaryIO, _Bounded(fh, end - start + 1))  # read/close/with: all a caller of open() uses

    def read_bytes(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except OSError:
            return None

    def size(self, key: str) -> int:
        """Bytes of one blob or of a whole tree (an adapter directory)."""
        root = self._path(key)
        if root.is_file():
            return root.stat().st_size
        return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.is_dir() else 0

    def adopt(self, path: Path) -> StagedBlob:
        return StagedBlob.adopt(path)

    def local_path(self, key: str) -> Path:
        return self._path(key)

    def staged_path(self, staged: StagedBlob) -> Path:
        """A closed staged blob as a file (the format checker reads it)."""
        staged.close()
        return staged.path

    def work_dir(self, key: str) -> Path:
        """A claim's working directory (trainer checkpoints): inside the store, so a resuming worker sees it."""
        return self._path(key)

    def engine_path(self, key: str) -> str | None:
        """What an engine is told to load: None here (the engine reads the file path, see engine_adapter_path)."""
        return None

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def delete_prefix(self, prefix: str) -> None:
        """Delete one blob or a whole ``prefix/`` tree (a file's blobs, an adapter directory)."""
        path = self._path(prefix.rstrip("/"))
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def prefixes(self, top: str) -> Iterator[str]:
        """Immediate children of ``top`` (e.g. every ``files/<id>``), for the orphan sweeper."""
        base = self._path(top)
        if base.is_dir():
            for child in base.iterdir():
                yield f"{top}/{child.name}"

    def age_seconds(self, key: str) -> float:
        return time.time() - self._path(key).stat().st_mtime

    def sweep_staging(self, older_than_s: float = 3600.0) -> int:
        """Remove staging files left by a crash. Returns how many went."""
        cutoff = time.time() - older_than_s
        removed = 0
        for part in self.staging.glob("*.part"):
            try:
                if part.stat().st_mtime < cutoff:
                    part.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed


class _Bounded:
    """At most ``left`` bytes of an open file (a range read)."""

    def __init__(self, fh: BinaryIO, left: int) -> None:
        self.fh, self.left = fh, left

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.fh.read(n) if n > 0 else b""
        self.left -= len(data)
        return data

    def close(self) -> None:
        self.fh.close()

    def __enter__(self) -> _Bounded:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
