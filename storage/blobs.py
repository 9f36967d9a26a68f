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
from typing import BinaryIO, Protocol

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
    def stage(self) -> StagedBlob: ...
    def commit(self, staged: StagedBlob, key: str) -> None: ...
    def open(self, key: str) -> BinaryIO: ...
    def local_path(self, key: str) -> Path: ...
    def commit_dir(self, source: Path, key: str, files: tuple[str, ...] | None = None) -> None: ...
    def exists(self, key: str) -> bool: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def prefixes(self, top: str) -> Iterator[str]: ...
    def age_seconds(self, key: str) -> float: ...


class LocalBlobStore:
    """Blobs as files under ``root/objects``; staging under ``root/staging`` on the same filesystem."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.staging = self.root / "staging"
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

    def local_path(self, key: str) -> Path:
        return self._path(key)

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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
