"""The audit trail: append-only events, each holding the hash of the one before it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from sqlalchemy import Row, func, select, update
from sqlalchemy.orm import Session

from app.audit.tables import AuditEvent, AuditHead
from app.core.db import utcnow
from app.webhooks import service as webhooks

GENESIS = "0" * 64


def event_hash(event: AuditEvent | Row) -> str:
    """The event's hash: any object with the chained fields (an ORM event or a plain row)."""
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
    webhooks.enqueue(db, event)  # announced to subscribers once this transaction commits
    return event


# What the chain covers, read as plain rows: building ORM objects was most of a verification.
_CHAINED = (AuditEvent.seq, AuditEvent.tenant_id, AuditEvent.at, AuditEvent.actor,
            AuditEvent.action, AuditEvent.subject_type, AuditEvent.subject_id, AuditEvent.data,
            AuditEvent.prev_hash, AuditEvent.hash)


def first_broken_event(db: Session) -> tuple[Row | None, int]:
    """Re-compute the chain, streaming its rows; the first event whose hash or link does not
    match, and the count."""
    prev, checked = GENESIS, 0
    rows = db.execute(select(*_CHAINED).order_by(AuditEvent.seq)
                      .execution_options(yield_per=5000))
    for event in rows:
        if event.prev_hash != prev or event_hash(event) != event.hash:
            return event, checked
        prev, checked = event.hash, checked + 1
    return None, checked


def chain_head(db: Session) -> dict[str, Any]:
    """The last event's sequence number and hash: what a receipt is signed under, so that a
    later rewrite of any event up to it (hashes recomputed and all) no longer matches."""
    last = db.execute(select(AuditEvent.seq, AuditEvent.hash)
                      .order_by(AuditEvent.seq.desc()).limit(1)).first()
    return {"seq": last.seq, "hash": last.hash} if last else {"seq": 0, "hash": GENESIS}


@dataclass
class ChainCheck:
    valid: bool
    checked: int  # the asking tenant's events verified: other tenants' volume is theirs
    first_invalid_seq: int | None  # when the first broken event is the tenant's own
    anchor_matches: bool | None  # None when no anchor was given


def check_chain(db: Session, tenant_id: str, anchor: tuple[int, str] | None = None
                ) -> ChainCheck:
    """Verify the whole chain for one tenant, and that the event an earlier signed anchor
    names still has the hash it had then."""
    broken, _ = first_broken_event(db)
    own = select(func.count()).select_from(AuditEvent).where(AuditEvent.tenant_id == tenant_id)
    if broken is not None:
        own = own.where(AuditEvent.seq < broken.seq)
    anchor_matches = None
    if anchor is not None:
        seq, expected = anchor
        anchor_matches = db.scalar(select(AuditEvent.hash).where(AuditEvent.seq == seq)) == \
            expected
    first_invalid = broken.seq if broken is not None and broken.tenant_id == tenant_id else None
    return ChainCheck(valid=broken is None and anchor_matches is not False,
                      checked=db.scalar(own), first_invalid_seq=first_invalid,
                      anchor_matches=anchor_matches)
