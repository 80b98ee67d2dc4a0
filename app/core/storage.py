"""Content-addressed blob store on a local directory, written atomically."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

from app.core.config import get_settings

CHUNK = 1 << 20


@dataclass(frozen=True)
class StoredBlob:
    sha256: str
    size: int
    created: bool  # False when an identical blob was already there


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class BlobStore:
    """Blobs live at ``root/ab/cd/<sha256>``; a write is temp file, fsync, rename."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp = self.root / "tmp"
        self._tmp.mkdir(exist_ok=True)

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise ValueError("not a sha256 hex digest")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def temp_path(self, suffix: str = "") -> Path:
        """A fresh path on the store's file system, for staging before :meth:`put_file`."""
        fd, name = tempfile.mkstemp(dir=self._tmp, suffix=suffix)
        os.close(fd)
        return Path(name)

    def put_file(self, source: Path, *, move: bool = False) -> StoredBlob:
        digest = sha256_file(source)
        target = self.path(digest)
        size = source.stat().st_size
        if target.exists():
            if move:
                source.unlink(missing_ok=True)
            return StoredBlob(digest, size, created=False)
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = self.temp_path()
        if move:
            os.replace(source, staged)
        else:
            shutil.copyfile(source, staged)
        with open(staged, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(staged, target)
        self._fsync_dir(target.parent)
        return StoredBlob(digest, size, created=True)

    def put_bytes(self, data: bytes) -> StoredBlob:
        staged = self.temp_path()
        staged.write_bytes(data)
        return self.put_file(staged, move=True)

    def open(self, sha256: str) -> BinaryIO:
        return open(self.path(sha256), "rb")

    def read_range(self, sha256: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``start..end`` inclusive, in chunks."""
        with self.open(sha256) as f:
            f.seek(start)
            left = end - start + 1
            while left > 0 and (chunk := f.read(min(CHUNK, left))):
                left -= len(chunk)
                yield chunk

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    @staticmethod
    def _fsync_dir(directory: Path) -> None:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@lru_cache
def get_blob_store() -> BlobStore:
    return BlobStore(get_settings().blob_root)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
