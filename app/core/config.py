"""All of Lethe's configuration, typed, read from ``LETHE_*`` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.engine.gate_thresholds import GateThresholds


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LETHE_", env_file=".env", extra="ignore",
                                      env_nested_delimiter="__")

    home: Path = Field(Path(".lethe"), description="State directory of the embedded default.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; SQLite in home if unset.")
    broker_url: str | None = Field(None, description="Celery broker; in-process worker if unset.")
    storage_url: str | None = Field(None, description="file:///path; home/blobs if unset.")

    # Limits on what clients may send.
    max_request_bytes: int = Field(1 << 30, description="Larger request bodies get 413.")
    max_archive_members: int = Field(200_000, description="Members an uploaded archive may have.")
    max_archive_bytes: int = Field(4 << 30, description="What an upload may unpack to in all.")
    max_compression_ratio: float = Field(200.0, description="Beyond this a member is a bomb.")
    max_image_pixels: int = Field(4096 * 4096, description="Pixels of one uploaded image.")
    # Every job loads a dataset's arrays whole and makes float32 inputs of them (4x), so this
    # bounds a worker's memory too: 2 GiB of pixels is about 10 GiB per job. It holds
    # Tiny-ImageNet (100,000 64x64 RGB images, 1.2 GB) with room; CIFAR-10 is 184 MB.
    max_decoded_bytes: int = Field(2 << 30, gt=0, description="What an upload's images or "
                                   "arrays may decode to in all (pixels × channels).")

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

    # Deletion requests.
    deletion_deadline_days: int = Field(30, description="GDPR Art. 12(3): one month.")
    coalesce_window_seconds: float = Field(3.0, ge=0, description="Requests for one model "
                                           "arriving this close together share one job.")
    request_max_attempts: int = Field(3, ge=1, description="Jobs tried per request.")
    version_grace_seconds: float = Field(0.0, ge=0, description="How long a version that "
                                         "still carries forgotten data keeps its blobs.")
    # The acceptance gate every candidate version must pass before it is published.
    gate: GateThresholds = Field(
        default_factory=GateThresholds,
        description="Default thresholds (e.g. LETHE_GATE__MAX_UTILITY_DROP=3); a request's "
                    "`gate` overrides them field by field.")
    fallback_methods: list[str] = Field(
        ["retrain"], description="Methods tried in turn, at their defaults, when a request's "
                                 "method fails the gate and the request names no fallback.")
    receipt_key_file: Path | None = Field(None, description="Ed25519 private key (PEM) that "
                                          "signs receipts; home/receipt-key.pem if unset.")

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

    @property
    def resolved_db_pool_size(self) -> int:
        return self.db_pool_size or self.api_threads + 16

    @property
    def blob_root(self) -> Path:
        if self.storage_url:
            if not self.storage_url.startswith("file://"):
                raise ValueError("only file:// storage URLs are supported")
            return Path(self.storage_url.removeprefix("file://"))
        return self.home / "blobs"

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
