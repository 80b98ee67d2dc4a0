"""Content-addressed blob stores: a local directory, or an S3-compatible object store.

Both keep the same promises (:class:`BlobStore`): a blob's name is the sha256 of its bytes, a
blob is written once and never overwritten, what is read is verified against its name
(:class:`CorruptBlob` otherwise), and :meth:`BlobStore.delete` erases it for real.
``LETHE_STORAGE_URL`` chooses: ``file:///path`` (or unset: ``home/blobs``) is
:class:`LocalBlobStore`; ``s3://bucket/prefix`` is :class:`app.core.s3_storage.S3BlobStore`,
which serves reads from a bounded read-through cache on the host (``app.core.blob_cache``).

Uploads are staged in a local folder before they are stored. Each process stages in a folder
of its own, ``<staging root>/<host>-<pid>-<random>/``, next to a lock file of the same name
that it holds an ``flock`` on for as long as it (or a child it forked) lives; the kernel
releases the lock however the process ends, ``kill -9`` included.
:meth:`BlobStore.sweep_staging` deletes the folders whose lock nobody holds: what an upload
killed mid-way left behind (its copy of the user's data included), without touching the work
of other replicas or workers that share the staging root.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import socket
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from app.core.config import get_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

CHUNK = 1 << 20
LOCK_SUFFIX = ".lock"
HEX = frozenset("0123456789abcdef")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredBlob:
    sha256: str
    size: int
    created: bool  # False when an identical blob was already there


class CorruptBlob(Exception):
    """A stored blob's bytes no longer hash to its name (bit rot, a truncated or tampered
    file or object). Raised by every store, never served."""

    def __init__(self, sha256: str, actual: str, where: str):
        super().__init__(f"blob {sha256} is corrupt: {where} hashes to {actual}")
        self.sha256, self.actual = sha256, actual


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_digest(sha256: str) -> str:
    if len(sha256) != 64 or not HEX.issuperset(sha256):
        raise ValueError("not a sha256 hex digest")
    return sha256


class VerifiedFiles:
    """Which local files this process has hashed and found to match their blob.

    Hashing a multi-gigabyte dataset on every read would cost seconds a job, so a file is
    hashed on its first read in a process and again whenever its identity (device, inode,
    size, modification time) changes: a rewrite, a replacement, a truncation. What this does
    not catch is bit rot under an unchanged inode, after the first read of a process.
    """

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, int, int, int]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def identity(path: Path) -> tuple[int, int, int, int]:
        st = os.stat(path)  # FileNotFoundError for a missing blob, as callers expect
        return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns

    def verify(self, sha256: str, path: Path) -> None:
        """Raise :class:`CorruptBlob` unless ``path`` holds the blob ``sha256``."""
        identity = self.identity(path)
        with self._lock:
            if self._seen.get(sha256) == identity:
                return
        actual = sha256_file(path)
        if actual != sha256:
            self.forget(sha256)
            raise CorruptBlob(sha256, actual, str(path))
        self.trust(sha256, identity)

    def trust(self, sha256: str, identity: tuple[int, int, int, int]) -> None:
        """Record a file as verified (its bytes were just hashed on the way in)."""
        with self._lock:
            self._seen[sha256] = identity

    def forget(self, sha256: str) -> None:
        with self._lock:
            self._seen.pop(sha256, None)


class BlobStore(ABC):
    """What every store offers; see the module's doc for the promises."""

    def __init__(self, staging_root: Path):
        self._staging_root = Path(staging_root)
        self._staging_root.mkdir(parents=True, exist_ok=True)
        self._lock, self.staging_dir = _claim_staging_dir(self._staging_root)

    @abstractmethod
    def path(self, sha256: str) -> Path:
        """A local file holding the blob's bytes, verified (:class:`CorruptBlob` otherwise),
        for reading in place: ``open``, ``preadv``, ``mmap``, ``safetensors.safe_open``.

        Raises ``FileNotFoundError`` when the store has no such blob. The file is the store's
        own (local store) or the host's cached copy (object store): never write to it, and
        open it right away. A cached copy may be evicted (or erased) once this returns; a
        file already opened or mapped stays readable until it is closed, as POSIX keeps an
        unlinked file's bytes for its open descriptors."""

    @abstractmethod
    def exists(self, sha256: str) -> bool:
        """Whether the store holds the blob (asks the object store, not the cache)."""

    @abstractmethod
    def put_file(self, source: Path, *, move: bool = False) -> StoredBlob:
        """Store ``source``'s bytes under their sha256, unless a blob of that name is there
        already (write once). ``move`` hands the file over: it is gone afterwards."""

    @abstractmethod
    def delete(self, sha256: str) -> None:
        """Erase the blob: its bytes leave the store (and this host's cache). Idempotent."""

    def temp_path(self, suffix: str = "") -> Path:
        """A fresh path in this process's staging folder, for staging before
        :meth:`put_file` (on the same file system, so that ``move`` is a rename)."""
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
        """Bytes ``start..end`` inclusive, in chunks, of the verified blob."""
        with self.open(sha256) as f:
            f.seek(start)
            left = end - start + 1
            while left > 0 and (chunk := f.read(min(CHUNK, left))):
                left -= len(chunk)
                yield chunk


class LocalBlobStore(BlobStore):
    """Blobs live at ``root/ab/cd/<sha256>``; a write is temp file, fsync, rename."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        super().__init__(self.root / "tmp")
        self._verified = VerifiedFiles()

    def file(self, sha256: str) -> Path:
        """Where the blob lives or would live (unverified, maybe absent)."""
        check_digest(sha256)
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def path(self, sha256: str) -> Path:
        target = self.file(sha256)
        self._verified.verify(sha256, target)
        return target

    def exists(self, sha256: str) -> bool:
        return self.file(sha256).exists()

    def put_file(self, source: Path, *, move: bool = False) -> StoredBlob:
        digest = sha256_file(source)
        target = self.file(digest)
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
            identity = VerifiedFiles.identity(staged)  # a rename keeps the inode
            os.replace(staged, target)
        finally:
            staged.unlink(missing_ok=True)  # gone already unless a step above failed
        self._fsync_dir(target.parent)
        self._verified.trust(digest, identity)
        return StoredBlob(digest, size, created=True)

    def delete(self, sha256: str) -> None:
        self.file(sha256).unlink(missing_ok=True)
        self._verified.forget(sha256)

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
    settings = get_settings()
    if settings.s3_location:
        from app.core.s3_storage import S3BlobStore  # boto3 only where it is used

        return S3BlobStore.from_settings(settings)
    return LocalBlobStore(settings.blob_root)


def erase_after_commit(db: Session, store: BlobStore, doomed: Iterable[str]) -> None:
    """Commit, then erase the blobs the committed change no longer references: a crash in
    between leaves an orphan blob, never a row that names a missing one."""
    db.commit()
    for sha256 in doomed:
        store.delete(sha256)
