from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, utcnow


class DeletionRequest(Base):
    __tablename__ = "deletion_requests"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"),
                                          index=True)
    sample_ids: Mapped[list]
    classes: Mapped[list | None]
    subject: Mapped[str | None] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(String(2000))
    method: Mapped[str] = mapped_column(String(100))
    params: Mapped[dict]
    # Methods tried in turn when `method` fails the acceptance gate, and the gate's thresholds
    # (both resolved against the service's defaults when the request arrived).
    fallback: Mapped[list | None]
    gate: Mapped[dict | None]
    status: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(default=0)  # jobs that tried to serve it
    error: Mapped[dict | None]  # why the last attempt failed, as a problem object
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), index=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    deadline: Mapped[datetime] = mapped_column(index=True)
    completed_at: Mapped[datetime | None]
    # When its deadline passed with the request still open: announced once (audit, webhooks).
    overdue_notified_at: Mapped[datetime | None]
