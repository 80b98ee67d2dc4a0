"""A host's bounded read-through cache of an object store's blobs.

Workers read a dataset's arrays and a model's checkpoint at the start of every job; on an
object store that would be a download each time. The cache keeps them on local disk:

* **Layout.** ``root/blobs/ab/<sha256>``; fills are downloaded into the store's staging folder
  (``root/tmp``, swept like any staging) and renamed into place, so a reader never sees half
  a file, and two processes filling the same blob at once cannot interleave.
* **Verified.** A fill is hashed before it is renamed into place: an object whose bytes do
  not match its name raises :class:`~app.core.storage.CorruptBlob` and is not cached. A
  cached file is hashed again on its first use in each process (and whenever its inode, size
  or modification time changes); one that fails is dropped and fetched again.
* **Bounded, least recently used first.** After every fill the files used longest ago go
  until the cache holds at most ``max_bytes``; a use sets the file's access time, the LRU
  clock (explicitly, so ``noatime`` mounts do not matter; the modification time, part of the
  file's identity above, is kept). A file used in the last ``grace_seconds`` is not evicted:
  :meth:`~app.core.storage.BlobStore.path` hands out a path that its caller opens next, and
  another process's fill must not pull it away in between. So the cap is exceeded by what is
  in use at the moment (one blob larger than the cap, say), until the next fill after that.
* **Shared by the processes of a host.** Fills of one blob take an ``flock`` on one of 256
  lock files (so the second process waits and finds the file instead of downloading it
  again), evictions one on ``evict.lock``; everything else is atomic renames and unlinks.
* **Erasure.** The object store decides what exists: :class:`~app.core.s3_storage.S3BlobStore`
  asks it (HEAD) before it serves a cached copy, drops its own host's copy when it deletes a
  blob, and :meth:`BlobCache.prune` (run every ``blob_cache_prune_seconds`` on every host
  with a Lethe process) drops the copies of blobs deleted from other hosts.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from app.core.storage import CorruptBlob, VerifiedFiles, check_digest, sha256_file

log = logging.getLogger(__name__)


class BlobCache:
    def __init__(self, root: Path, max_bytes: int, grace_seconds: float = 30.0):
        self.root, self.max_bytes, self.grace_seconds = Path(root), max_bytes, grace_seconds
        self.blobs, self.locks = self.root / "blobs", self.root / "locks"
        for directory in (self.blobs, self.locks):
            directory.mkdir(parents=True, exist_ok=True)
        self._verified = VerifiedFiles()

    def file(self, sha256: str) -> Path:
        check_digest(sha256)
        return self.blobs / sha256[:2] / sha256

    def lookup(self, sha256: str) -> Path | None:
        """The cached copy, verified and marked used; None when there is none (or it was
        corrupt and is dropped now)."""
        cached = self.file(sha256)
        try:
            self._verified.verify(sha256, cached)
        except FileNotFoundError:
            return None
        except CorruptBlob as exc:
            log.warning("dropping a corrupt cached copy: %s", exc)
            self.discard(sha256)
            return None
        self._touch(cached)
        return cached

    def fill(self, sha256: str, download: Callable[[Path], None], staging_dir: Path) -> Path:
        """The blob's cached copy, downloaded now by ``download(path)`` unless another
        process of the host got it meanwhile."""
        with self._locked(self.locks / f"{sha256[:2]}.lock"):
            if (hit := self.lookup(sha256)) is not None:
                return hit
            fd, name = tempfile.mkstemp(dir=staging_dir, prefix="fill-")
            os.close(fd)
            partial = Path(name)
            try:
                download(partial)
                actual = sha256_file(partial)
                if actual != sha256:
                    raise CorruptBlob(sha256, actual, "the stored object")
                self._place(sha256, partial)
            finally:
                partial.unlink(missing_ok=True)  # renamed into place unless a step failed
        self.evict(keep=sha256)
        return self.file(sha256)

    def adopt(self, sha256: str, source: Path) -> None:
        """Take ``source``, whose bytes were just hashed to ``sha256`` on their way into the
        object store, into the cache by a rename (same file system: the store's staging)."""
        with self._locked(self.locks / f"{sha256[:2]}.lock"):
            if self.file(sha256).exists():
                source.unlink(missing_ok=True)
                return
            self._place(sha256, source)
        self.evict(keep=sha256)

    def discard(self, sha256: str) -> None:
        self.file(sha256).unlink(missing_ok=True)
        self._verified.forget(sha256)

    def cached(self) -> list[str]:
        return [entry.name for entry, _ in self._entries()]

    def size(self) -> int:
        return sum(st.st_size for _, st in self._entries())

    def evict(self, keep: str | None = None) -> int:
        """Evict the least recently used files until the cache fits its cap; returns how
        many went."""
        removed = 0
        recent = time.time_ns() - int(self.grace_seconds * 1e9)
        with self._locked(self.root / "evict.lock"):
            entries = sorted(self._entries(), key=lambda e: e[1].st_atime_ns)
            total = sum(st.st_size for _, st in entries)
            for entry, st in entries:
                if total <= self.max_bytes:
                    break
                if entry.name == keep or st.st_atime_ns > recent:
                    continue
                entry.unlink(missing_ok=True)
                self._verified.forget(entry.name)
                total -= st.st_size
                removed += 1
        return removed

    def prune(self, exists: Callable[[str], bool]) -> int:
        """Drop the cached copies of blobs the object store no longer holds; returns how
        many went."""
        gone = [sha256 for sha256 in self.cached() if not exists(sha256)]
        for sha256 in gone:
            self.discard(sha256)
        if gone:
            log.info("dropped %d cached blobs erased from the object store", len(gone))
        return len(gone)

    def prune_if_due(self, interval: float, exists: Callable[[str], bool]) -> int:
        """:meth:`prune`, unless a process of this host did within ``interval`` seconds or
        is at it now (the stamp file's modification time says when the last one began)."""
        stamp = self.root / "pruned-at"
        with open(self.root / "prune.lock", "ab") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0
            try:
                if time.time() - stamp.stat().st_mtime < interval:
                    return 0
            except FileNotFoundError:
                pass
            stamp.touch()
            return self.prune(exists)

    def _place(self, sha256: str, source: Path) -> None:
        target = self.file(sha256)
        target.parent.mkdir(exist_ok=True)
        identity = VerifiedFiles.identity(source)  # a rename keeps the inode
        os.replace(source, target)
        self._verified.trust(sha256, identity)
        self._touch(target)

    @staticmethod
    def _touch(cached: Path) -> None:
        try:
            st = cached.stat()
            os.utime(cached, ns=(time.time_ns(), st.st_mtime_ns))
        except FileNotFoundError:  # evicted by another process meanwhile
            pass

    def _entries(self) -> Iterator[tuple[Path, os.stat_result]]:
        for folder in self.blobs.iterdir():
            try:
                files = list(folder.iterdir())
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in files:
                try:
                    yield entry, entry.stat()
                except FileNotFoundError:  # evicted or erased meanwhile
                    continue

    @staticmethod
    @contextmanager
    def _locked(path: Path) -> Iterator[None]:
        with open(path, "ab") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield  # the lock goes when the file is closed
