from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, utcnow

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued", "running", "succeeded", "failed", "cancelled")
FINAL_STATES = (SUCCEEDED, FAILED, CANCELLED)


class Job(Base):
    """One unlearning run; the row, not the broker message, is the source of truth."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_model_status", "model_id", "status"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    method: Mapped[str] = mapped_column(String(100))
    params: Mapped[dict]
    # [{"method", "params"}, ...] tried in turn when a candidate fails the gate; gate thresholds.
    fallback: Mapped[list | None]
    gate: Mapped[dict | None]
    forget_rows: Mapped[list]  # dataset rows to forget
    forget_classes: Mapped[list | None]
    status: Mapped[str] = mapped_column(String(16), default=QUEUED, index=True)
    progress: Mapped[float] = mapped_column(default=0.0)
    phase: Mapped[str | None] = mapped_column(String(100))
    base_version: Mapped[int | None]
    result_version: Mapped[int | None]
    metrics: Mapped[dict | None]
    error: Mapped[dict | None]
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    attempts: Mapped[int] = mapped_column(default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None]
    dispatched_at: Mapped[datetime | None]  # last time a queue message was seen for it
    # Requests arriving before this are merged into the job rather than queued behind it.
    not_before: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
