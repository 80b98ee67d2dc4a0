"""Content-addressed blob store on a local directory, written atomically.

Blobs are staged in ``tmp/`` before they are renamed into place. Each process stages in a
folder of its own, ``tmp/<host>-<pid>-<random>/``, next to a lock file of the same name that
it holds an ``flock`` on for as long as it (or a child it forked) lives; the kernel releases
the lock however the process ends, ``kill -9`` included. :meth:`BlobStore.sweep_staging`
deletes the folders whose lock nobody holds: what an upload killed mid-way left behind (its
copy of the user's data included), without touching the work of other replicas or workers
that share the store.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

from app.core.config import get_settings

CHUNK = 1 << 20
LOCK_SUFFIX = ".lock"
log = logging.getLogger(__name__)


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
        self._staging_root = self.root / "tmp"
        self._staging_root.mkdir(exist_ok=True)
        self._lock, self.staging_dir = _claim_staging_dir(self._staging_root)

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise ValueError("not a sha256 hex digest")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def temp_path(self, suffix: str = "") -> Path:
        """A fresh path on the store's file system, for staging before :meth:`put_file`."""
        fd, name = tempfile.mkstemp(dir=self.staging_dir, suffix=suffix)
        os.close(fd)
        return Path(name)

    def sweep_staging(self, older_than: float) -> int:
        """Delete what dead processes left in staging before ``older_than`` (a time.time());
        returns how many folders and loose files went."""
        removed = 0
        for entry in list(self._staging_root.iterdir()):
            try:
                if entry.stat().st_mtime < older_than:
                    removed += _remove_if_abandoned(entry)
            except OSError:  # another sweeper got there first
                continue
        if removed:
            log.info("swept %d abandoned staging entries from %s", removed, self._staging_root)
        return removed

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
        try:
            if move:
                os.replace(source, staged)
            else:
                shutil.copyfile(source, staged)
            with open(staged, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(staged, target)
        finally:
            staged.unlink(missing_ok=True)  # gone already unless a step above failed
        self._fsync_dir(target.parent)
        return StoredBlob(digest, size, created=True)

    def put_bytes(self, data: bytes) -> StoredBlob:
        staged = self.temp_path()
        try:
            staged.write_bytes(data)
            return self.put_file(staged, move=True)
        finally:
            staged.unlink(missing_ok=True)

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


def _claim_staging_dir(staging_root: Path) -> tuple[BinaryIO, Path]:
    """This process's staging folder and its lock file, held locked (see the module's doc)."""
    prefix = f"{socket.gethostname()}-{os.getpid()}-"
    fd, name = tempfile.mkstemp(dir=staging_root, prefix=prefix, suffix=LOCK_SUFFIX)
    lock = os.fdopen(fd, "rb")
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a fresh file: nobody else holds it
    directory = Path(name.removesuffix(LOCK_SUFFIX))
    directory.mkdir()
    return lock, directory


def _remove_if_abandoned(entry: Path) -> int:
    """1 if ``entry`` was a dead process's staging (or a loose file staged before folders
    were per process) and is now deleted, else 0."""
    if entry.suffix == LOCK_SUFFIX:
        with open(entry, "rb") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0  # its process is alive
            shutil.rmtree(entry.with_suffix(""), ignore_errors=True)
            entry.unlink(missing_ok=True)  # last: a sweep cut short is finished by the next
        return 1
    if entry.is_dir():
        if entry.with_name(entry.name + LOCK_SUFFIX).exists():
            return 0  # judged by its lock file
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)
    return 1


@lru_cache
def get_blob_store() -> BlobStore:
    return BlobStore(get_settings().blob_root)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
