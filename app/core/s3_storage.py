"""The blob store on an S3-compatible object store (AWS S3, MinIO, Ceph RGW, …).

``LETHE_STORAGE_URL=s3://bucket/prefix`` puts blob ``<sha256>`` at key ``prefix/<sha256>``.
The store keeps :class:`~app.core.storage.BlobStore`'s promises:

* **Written once.** :meth:`S3BlobStore.put_file` asks first (HEAD) and uploads only a blob
  that is not there; the upload itself is conditional (``If-None-Match: *`` on ``PutObject``
  and ``CompleteMultipartUpload``), so of two racing writers one wins and the other is told
  412 and counts as "already there". A store that does not implement conditional writes
  (501) gets plain writes from then on: both writers then write the same bytes under the same
  name, which content addressing makes harmless.
* **Verified on read.** Reads go through the host's :class:`~app.core.blob_cache.BlobCache`,
  which hashes what it downloads (and its cached copies on first use in a process).
* **Erased for real.** :meth:`S3BlobStore.delete` deletes the object and then every version
  and delete marker of its key, so a versioned bucket keeps no old copy; it needs
  ``s3:DeleteObject``, ``s3:ListBucketVersions`` and ``s3:DeleteObjectVersion``. It also drops
  this host's cached copy; other hosts never serve a copy the store no longer holds (a HEAD
  before every read) and drop it within ``blob_cache_prune_seconds``.
* **Staged locally.** Uploads are staged (and downloads land) in ``<cache dir>/tmp``, swept
  like the local store's staging; large blobs move in parts (boto3's managed transfer). A
  multipart upload cut short by a killed process is aborted by the next
  :meth:`~S3BlobStore.sweep_staging` a day later (an ``AbortIncompleteMultipartUpload``
  lifecycle rule on the bucket does the same).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import weakref
from datetime import UTC, datetime
from errno import ENOENT
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError
from s3transfer.manager import TransferManager

from app.core.blob_cache import BlobCache
from app.core.storage import BlobStore, StoredBlob, check_digest, sha256_file

if TYPE_CHECKING:
    from app.core.config import Settings

log = logging.getLogger(__name__)

NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
# An upload nobody completed in a day is taken to be a dead process's: jobs and uploads
# finish well within that, and the parts hold a copy of the user's data.
ABANDONED_UPLOAD_SECONDS = 24 * 3600


class S3BlobStore(BlobStore):
    def __init__(self, bucket: str, prefix: str, cache: BlobCache, *,
                 client_options: dict[str, Any] | None = None,
                 multipart_bytes: int = 64 << 20, prune_seconds: float = 60.0):
        super().__init__(cache.root / "tmp")
        self.bucket, self.prefix, self.cache = bucket, prefix.strip("/"), cache
        self._client_options = client_options or {}
        self._transfer = TransferConfig(multipart_threshold=multipart_bytes,
                                        multipart_chunksize=multipart_bytes)
        self._conditional = True  # until the store answers 501 to If-None-Match
        self._clients: dict[int, Any] = {}
        self._clients_lock = threading.Lock()
        self._prune_seconds = prune_seconds
        self._pruner_pid: int | None = None
        self._start_pruner()  # an idle process too: it may hold copies erased elsewhere

    @classmethod
    def from_settings(cls, settings: Settings) -> S3BlobStore:
        bucket, prefix = settings.s3_location
        options: dict[str, Any] = {
            "endpoint_url": settings.s3_endpoint_url, "region_name": settings.s3_region,
            "config": Config(s3={"addressing_style": settings.s3_addressing_style},
                             retries={"mode": "standard"})}
        if settings.s3_access_key_id:
            secret = settings.s3_secret_access_key
            options |= {"aws_access_key_id": settings.s3_access_key_id,
                        "aws_secret_access_key": secret.get_secret_value() if secret else None}
        cache = BlobCache(settings.resolved_blob_cache_dir, settings.blob_cache_bytes)
        return cls(bucket, prefix, cache, client_options=options,
                   multipart_bytes=settings.s3_multipart_bytes,
                   prune_seconds=settings.blob_cache_prune_seconds)

    def key(self, sha256: str) -> str:
        check_digest(sha256)
        return f"{self.prefix}/{sha256}" if self.prefix else sha256

    # Reading ---------------------------------------------------------------------------------

    def exists(self, sha256: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(sha256))
        except ClientError as exc:
            if _code(exc) in NOT_FOUND:
                return False
            raise
        return True

    def path(self, sha256: str) -> Path:
        self._start_pruner()
        # The object store, not the cache, says whether the blob still exists: a copy
        # cached before another host erased it must not be served.
        if not self.exists(sha256):
            self.cache.discard(sha256)
            raise FileNotFoundError(ENOENT, "No such file in the object store",
                                    f"s3://{self.bucket}/{self.key(sha256)}")
        if (cached := self.cache.lookup(sha256)) is not None:
            return cached
        return self.cache.fill(sha256, lambda into: self._download(sha256, into),
                               self.staging_dir)

    def _download(self, sha256: str, into: Path) -> None:
        with TransferManager(self.client, self._transfer) as manager:
            future = manager.download(self.bucket, self.key(sha256), str(into))
            try:
                future.result()
            except ClientError as exc:
                if _code(exc) in NOT_FOUND:  # erased between the HEAD and the GET
                    raise FileNotFoundError(ENOENT, "No such file in the object store",
                                            f"s3://{self.bucket}/{self.key(sha256)}") from exc
                raise

    # Writing ---------------------------------------------------------------------------------

    def put_file(self, source: Path, *, move: bool = False) -> StoredBlob:
        self._start_pruner()
        digest = sha256_file(source)
        size = source.stat().st_size
        created = not self.exists(digest) and self._upload(source, digest)
        if move:
            # Handed over: the bytes are verified, so the cache may keep them (a worker's
            # next job reads the checkpoint it just wrote without a download).
            staged = self.temp_path()
            shutil.move(source, staged)  # a rename unless the caller staged elsewhere
            self.cache.adopt(digest, staged)
        return StoredBlob(digest, size, created=created)

    def _upload(self, source: Path, sha256: str) -> bool:
        """True if this upload created the object, False if a racing writer's came first."""
        try:
            self._transfer_upload(source, sha256)
        except ClientError as exc:
            if _code(exc) in {"PreconditionFailed", "412"}:
                return False  # If-None-Match: a writer of the same bytes was first
            if _code(exc) in {"NotImplemented", "501"} and self._conditional:
                log.warning("s3://%s does not implement conditional writes; writing blobs "
                            "after a HEAD only (content addressing makes a race harmless)",
                            self.bucket)
                self._conditional = False
                self._transfer_upload(source, sha256)
                return True
            raise
        return True

    def _transfer_upload(self, source: Path, sha256: str) -> None:
        with TransferManager(self.client, self._transfer) as manager:
            # s3transfer aborts a multipart upload that fails, its parts included.
            manager.upload(str(source), self.bucket, self.key(sha256)).result()

    # Erasing ---------------------------------------------------------------------------------

    def delete(self, sha256: str) -> None:
        key = self.key(sha256)
        # This host's copy goes first, so that no moment sees the blob gone from the bucket
        # but still cached here; and again at the end, in case a reader fetched it meanwhile.
        self.cache.discard(sha256)
        self.client.delete_object(Bucket=self.bucket, Key=key)
        # On a versioned bucket that only added a delete marker: the bytes stay in the
        # object's versions until each is deleted by its id.
        doomed = []
        for page in self.client.get_paginator("list_object_versions").paginate(
                Bucket=self.bucket, Prefix=key):
            for entry in page.get("Versions", []) + page.get("DeleteMarkers", []):
                if entry["Key"] == key:
                    doomed.append({"Key": key, "VersionId": entry["VersionId"]})
        for start in range(0, len(doomed), 1000):  # DeleteObjects takes up to 1,000 keys
            answer = self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": doomed[start:start + 1000],
                                            "Quiet": True})
            if errors := answer.get("Errors"):
                raise OSError(f"s3://{self.bucket}/{key}: versions not deleted: {errors}")
        self.cache.discard(sha256)

    def sweep_staging(self, older_than: float) -> int:
        removed = super().sweep_staging(older_than)
        cutoff = datetime.fromtimestamp(older_than - ABANDONED_UPLOAD_SECONDS, UTC)
        prefix = f"{self.prefix}/" if self.prefix else ""
        try:
            for page in self.client.get_paginator("list_multipart_uploads").paginate(
                    Bucket=self.bucket, Prefix=prefix):
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] < cutoff:
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                        removed += 1
        except ClientError as exc:  # a start must not fail on this; a lifecycle rule may do it
            log.warning("could not abort abandoned multipart uploads in s3://%s/%s: %s",
                        self.bucket, prefix, exc)
        return removed

    # Plumbing --------------------------------------------------------------------------------

    @property
    def client(self):
        """This process's client: a client must not cross a fork (Celery's pool forks), and
        sessions are not thread-safe, so each process makes its own, once."""
        pid = os.getpid()
        client = self._clients.get(pid)
        if client is None:
            with self._clients_lock:
                if (client := self._clients.get(pid)) is None:
                    client = boto3.session.Session().client("s3", **self._client_options)
                    events = client.meta.events
                    for operation in ("PutObject", "CompleteMultipartUpload"):
                        events.register(f"before-parameter-build.s3.{operation}",
                                        self._write_once)
                    self._clients = {pid: client}
        return client

    def _write_once(self, params: dict, **_kwargs) -> None:
        if self._conditional:
            params.setdefault("IfNoneMatch", "*")

    def _start_pruner(self) -> None:
        """Drop this host's cached copies of blobs erased elsewhere, every
        ``prune_seconds``, from a daemon thread of each process that has the store (one
        process of the host does it each period; see BlobCache.prune_if_due). Called again
        on use, since a forked child (Celery's pool) inherits no thread."""
        if self._pruner_pid == os.getpid():
            return
        self._pruner_pid = os.getpid()
        threading.Thread(target=_prune_loop, args=(weakref.ref(self), self._prune_seconds),
                         daemon=True, name="lethe-blob-cache-pruner").start()


def _prune_loop(store_ref: weakref.ref, interval: float) -> None:
    # A weak reference: a store nobody uses any more (tests make many) ends its thread.
    while True:
        time.sleep(min(interval, 5.0))
        store = store_ref()
        if store is None:
            return
        try:
            store.cache.prune_if_due(interval, store.exists)
        except Exception:  # noqa: BLE001 - the store may be unreachable for a while
            log.warning("pruning the blob cache failed; trying again", exc_info=True)
        del store


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
