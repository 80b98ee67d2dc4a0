"""All of Lethe's configuration, typed, read from ``LETHE_*`` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.engine.gate_thresholds import GateThresholds


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LETHE_", env_file=".env", extra="ignore",
                                      env_nested_delimiter="__")

    home: Path = Field(Path(".lethe"), description="State directory of the embedded default.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; SQLite in home if unset.")
    broker_url: str | None = Field(None, description="Celery broker; in-process worker if unset.")
    storage_url: str | None = Field(None, description="file:///path, or s3://bucket/prefix "
                                    "for an S3-compatible object store; home/blobs if unset.")

    # Object storage (storage_url s3://...). Credentials come from the standard AWS chain
    # (AWS_ACCESS_KEY_ID..., AWS_PROFILE, an instance role) unless given here.
    s3_endpoint_url: str | None = Field(None, description="The store's endpoint (MinIO, Ceph, "
                                        "…); AWS S3 if unset.")
    s3_region: str | None = Field(None, description="The bucket's region; the AWS chain's "
                                  "(AWS_REGION, the profile) if unset.")
    s3_access_key_id: str | None = Field(None, description="With s3_secret_access_key; the "
                                         "AWS credential chain if unset.")
    s3_secret_access_key: SecretStr | None = Field(None, description="See s3_access_key_id.")
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="Bucket in the path (most MinIO and Ceph setups) or in the host "
                            "name; botocore chooses if auto.")
    s3_multipart_bytes: int = Field(64 << 20, ge=5 << 20, description="Blobs at least this "
                                    "large are uploaded and downloaded in parts of this size.")
    # A host's read-through cache of the object store's blobs (see app/core/blob_cache.py).
    blob_cache_bytes: int = Field(10 << 30, ge=0, description="What the cache of one host may "
                                  "hold; least recently used blobs go first (a blob in use "
                                  "may take it over for a while).")
    blob_cache_dir: Path | None = Field(None, description="The cache's directory, shared by "
                                        "the Lethe processes of a host; home/blob-cache if "
                                        "unset.")
    blob_cache_prune_seconds: float = Field(60.0, gt=0, description="How often a host drops "
                                            "cached blobs the object store no longer holds "
                                            "(erased elsewhere).")

    # Limits on what clients may send.
    max_request_bytes: int = Field(1 << 30, description="Larger request bodies get 413.")
    max_archive_members: int = Field(200_000, description="Members an uploaded archive may have.")
    max_archive_bytes: int = Field(4 << 30, description="What an upload may unpack to in all.")
    max_compression_ratio: float = Field(200.0, description="Beyond this a member is a bomb.")
    max_image_pixels: int = Field(4096 * 4096, description="Pixels of one uploaded image.")
    # It holds Tiny-ImageNet (100,000 64x64 RGB images, 1.2 GB) with room; CIFAR-10 is 184 MB.
    # A job holds a dataset this size in memory only up to job_resident_dataset_bytes; past
    # that it reads the rows it needs from the blob store (see worker/engine/data/loader.py).
    max_decoded_bytes: int = Field(2 << 30, gt=0, description="What an upload's images or "
                                   "arrays may decode to in all (pixels × channels; a table's "
                                   "features as float32, or its texts' UTF-8 bytes).")
    # Text and tabular uploads (CSV, JSON Lines, Parquet).
    max_dataset_rows: int = Field(1_000_000, gt=0, description="Rows a table upload may have "
                                  "(each training row is a sample the database indexes).")
    max_text_chars: int = Field(100_000, gt=0, description="Characters of one text cell.")
    max_row_bytes: int = Field(1 << 20, gt=0, description="Bytes of one line of a CSV or "
                               "JSON Lines upload (a quoted CSV cell may span lines).")
    max_classes: int = Field(10_000, ge=2, le=100_000, description="Distinct labels a table "
                             "upload may have.")

    # Serving.
    api_threads: int = Field(32, ge=1, le=1000, description="Threads serving the API's "
                             "blocking routes; the database pool is sized to cover them.")
    db_pool_size: int | None = Field(None, ge=1, description="Connections kept open; default "
                                     "api_threads + 16 (job threads, heartbeats, upkeep).")

    # Jobs.
    queue_name: str = Field("unlearning", description="The Celery queue jobs are routed to.")
    job_lease_seconds: float = Field(60.0, description="A running job whose heartbeat is older "
                                     "than this is presumed dead and may be taken over.")
    job_max_attempts: int = Field(3, description="Runs of one job (lost workers included).")
    job_time_limit_seconds: int = Field(6 * 3600, description="Celery's hard limit per job.")
    busy_retry_seconds: float = Field(2.0, description="Wait before asking again for a job "
                                      "whose model is busy.")
    redispatch_after_seconds: float = Field(300.0, description="A queued job unclaimed this "
                                            "long is sent again (a lost message).")
    sweep_interval_seconds: float = Field(30.0, description="Period of the workers' upkeep.")
    worker_max_memory_mb: int = Field(16_384, ge=256, description="A Celery child whose "
                                      "resident memory exceeds this after a job is replaced.")
    local_workers: int = Field(2, description="Concurrent jobs of the in-process worker.")
    torch_threads: int | None = Field(None, description="torch.set_num_threads for jobs.")
    job_resident_dataset_bytes: int = Field(256 << 20, ge=0, description="A dataset whose "
                                            "decoded inputs are at most this large is held in "
                                            "memory as float32 model inputs, cached across "
                                            "jobs; a larger one is read row by row from the "
                                            "blob store, only the rows a job touches.")

    # Deletion requests.
    deletion_deadline_days: int = Field(30, description="GDPR Art. 12(3): one month.")
    coalesce_window_seconds: float = Field(
        0.0, ge=0, description="How long a new job waits for more requests before a worker may "
        "start it. Requests still join a job while it waits behind another job of its model or "
        "for a worker, so a burst becomes a few versions even at 0, and a lone request on an "
        "idle model starts at once.")
    request_max_attempts: int = Field(3, ge=1, description="Jobs tried per request.")
    version_grace_seconds: float = Field(0.0, ge=0, description="How long a version that "
                                         "still carries forgotten data keeps its blobs.")
    # The acceptance gate every candidate version must pass before it is published.
    gate: GateThresholds = Field(
        default_factory=GateThresholds,
        description="Default thresholds (e.g. LETHE_GATE__MAX_UTILITY_DROP=3); a request's "
                    "`gate` overrides them field by field.")
    # What a request that names no method gets, by its kind: the first method, then the rest
    # as its fallback chain (README, "What we recommend": the zoo's gate verdicts at defaults).
    default_chain_samples: list[str] = Field(
        ["projected-gradient", "feature-constraint", "retrain"], min_length=1,
        description="Methods tried in turn for a request for samples (sample_ids or a subject) "
                    "that names no method; a fallback the request names replaces all but the "
                    "first.")
    default_chain_classes: list[str] = Field(
        ["projected-gradient", "deepclean", "retrain"], min_length=1,
        description="The same for a request for whole classes.")
    fallback_methods: list[str] = Field(
        ["retrain"], description="Methods tried in turn, at their defaults, when a request's "
                                 "named method fails the gate and the request names no "
                                 "fallback.")
    receipt_key_file: Path | None = Field(None, description="Ed25519 private key (PEM) that "
                                          "signs receipts; home/receipt-key.pem if unset.")
    audit_checkpoint_every: int = Field(
        1000, ge=1, description="A verification of the audit chain that holds, and covers at "
        "least this many events past the last signed checkpoint, signs a new one at its end "
        "(so does the workers' upkeep): the next verification re-hashes only what follows.")

    # The web console (/ui).
    console_secret: str | None = Field(None, min_length=32, description="Signs the "
                                       "console's session cookies; generated into "
                                       "home/console-secret if unset (replicas must share it).")
    console_session_hours: float = Field(12.0, gt=0, le=24 * 30, description="How long a "
                                         "console sign-in lasts.")
    benchmarks_dir: Path | None = Field(None, description="Where the console finds the "
                                        "benchmark's results; the checkout's benchmarks/ if "
                                        "unset.")

    # Webhooks.
    webhook_allow_private: bool = Field(False, description="Deliver to loopback, private and "
                                        "link-local addresses too (refused by default: a "
                                        "tenant must not reach the service's own network).")
    webhook_max_attempts: int = Field(8, ge=1, le=100, description="Attempts per delivery "
                                      "before it is marked failed (a resend starts again).")
    webhook_backoff_seconds: float = Field(5.0, ge=0, description="Wait before the first "
                                           "retry; it doubles with every failed attempt.")
    webhook_max_backoff_seconds: float = Field(3600.0, ge=0, description="The longest wait "
                                               "between two attempts.")
    webhook_timeout_seconds: float = Field(10.0, gt=0, description="How long one attempt "
                                           "waits for the receiver's answer.")
    webhook_queue_name: str | None = Field(None, description="The Celery queue deliveries "
                                           "go to; <queue_name>.webhooks if unset.")

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'lethe.db').resolve()}"

    def default_chain(self, *, classes: bool) -> list[str]:
        """The methods a request that names none tries: by whether it forgets whole classes."""
        return self.default_chain_classes if classes else self.default_chain_samples

    @property
    def resolved_db_pool_size(self) -> int:
        return self.db_pool_size or self.api_threads + 16

    @field_validator("storage_url")
    @classmethod
    def _known_scheme(cls, url: str | None) -> str | None:
        if url and not url.startswith(("file://", "s3://")):
            raise ValueError("a file:// or s3:// URL")
        if url and url.startswith("s3://") and not url.removeprefix("s3://").split("/")[0]:
            raise ValueError("s3://BUCKET/optional/prefix: the bucket is missing")
        return url

    @property
    def s3_location(self) -> tuple[str, str] | None:
        """``(bucket, key prefix without slashes)`` for an s3:// storage_url, else None."""
        if not self.storage_url or not self.storage_url.startswith("s3://"):
            return None
        bucket, _, prefix = self.storage_url.removeprefix("s3://").partition("/")
        return bucket, prefix.strip("/")

    @property
    def blob_root(self) -> Path:
        """The local store's directory (file:// or unset storage_url)."""
        if self.s3_location:
            raise ValueError("storage_url is an s3:// URL: blobs have no local root")
        if self.storage_url:
            return Path(self.storage_url.removeprefix("file://"))
        return self.home / "blobs"

    @property
    def resolved_blob_cache_dir(self) -> Path:
        return self.blob_cache_dir or self.home / "blob-cache"

    @property
    def resolved_receipt_key_file(self) -> Path:
        return self.receipt_key_file or self.home / "receipt-key.pem"

    @property
    def resolved_webhook_queue(self) -> str:
        return self.webhook_queue_name or f"{self.queue_name}.webhooks"

    @property
    def embedded_worker(self) -> bool:
        return not self.broker_url


@lru_cache
def get_settings() -> Settings:
    return Settings()
