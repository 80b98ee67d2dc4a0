"""The audit trail: append-only events, each holding the hash of the one before it."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.audit.tables import AuditEvent, AuditHead
from app.core.db import utcnow

GENESIS = "0" * 64


def event_hash(event: AuditEvent) -> str:
    content = {
        "prev_hash": event.prev_hash,
        "at": event.at.astimezone(UTC).isoformat(timespec="microseconds"),
        "tenant_id": event.tenant_id,
        "actor": event.actor,
        "action": event.action,
        "subject_type": event.subject_type,
        "subject_id": event.subject_id,
        "data": event.data,
    }
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _lock_head(db: Session) -> AuditHead:
    # The UPDATE takes the row lock (PostgreSQL) or the write lock (SQLite) before we read the
    # last hash, so two writers can never chain onto the same predecessor.
    touched = db.execute(update(AuditHead).where(AuditHead.id == 1)
                         .values(count=AuditHead.count + 0)).rowcount
    if not touched:
        db.add(AuditHead(id=1, last_hash=GENESIS, count=0))
        db.flush()
    return db.get(AuditHead, 1, populate_existing=True)


def record(
    db: Session,
    action: str,
    subject_type: str,
    subject_id: str,
    *,
    tenant_id: str | None,
    actor: str | None = None,
    data: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append an event in the caller's transaction."""
    head = _lock_head(db)
    event = AuditEvent(tenant_id=tenant_id, at=utcnow(), actor=actor, action=action,
                       subject_type=subject_type, subject_id=subject_id,
                       data=json.loads(json.dumps(data or {}, default=str)),
                       prev_hash=head.last_hash)
    event.hash = event_hash(event)
    head.last_hash, head.count = event.hash, head.count + 1
    db.add(event)
    db.flush()
    return event


def first_broken_event(db: Session) -> tuple[AuditEvent | None, int]:
    """Re-compute the chain; the first event whose hash or link does not match, and the count."""
    prev, checked = GENESIS, 0
    for event in db.scalars(select(AuditEvent).order_by(AuditEvent.seq)).yield_per(1000):
        if event.prev_hash != prev or event_hash(event) != event.hash:
            return event, checked
        prev, checked = event.hash, checked + 1
    return None, checked
