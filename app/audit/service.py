"""The audit trail: append-only events, each holding the hash of the one before it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from sqlalchemy import Row, Text, cast, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from app.audit.tables import AuditEvent, AuditHead
from app.core.db import utcnow
from app.webhooks import service as webhooks

GENESIS = "0" * 64


# json.dumps with these arguments builds exactly this encoder for every call; building it once
# gives the same bytes, a little faster (the hash format is fixed: existing chains must verify).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)
_DECODE = json.JSONDecoder().decode


def _hash_of(prev_hash: str, at: str, tenant_id: str | None, actor: str | None, action: str,
             subject_type: str, subject_id: str, data: Any) -> str:
    """sha256 of the event's canonical JSON, ``at`` already in its ISO form."""
    return hashlib.sha256(_CANONICAL.encode({
        "prev_hash": prev_hash, "at": at, "tenant_id": tenant_id, "actor": actor,
        "action": action, "subject_type": subject_type, "subject_id": subject_id,
        "data": data,
    }).encode()).hexdigest()


def _iso(at) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def event_hash(event: AuditEvent | Row) -> str:
    """The event's hash: any object with the chained fields (an ORM event or a plain row)."""
    return _hash_of(event.prev_hash, _iso(event.at), event.tenant_id, event.actor,
                    event.action, event.subject_type, event.subject_id, event.data)


def claim_head(db: Session | Connection, events: int = 1) -> str:
    """Lock the chain's head for the rest of the transaction, count ``events`` more on it, and
    return its last hash, which the first of them chains onto.

    The UPDATE takes the row lock (PostgreSQL) or the write lock (SQLite) before the last hash
    is read, in the same statement, so two writers can never chain onto the same predecessor.
    """
    last_hash = db.execute(update(AuditHead).where(AuditHead.id == 1)
                           .values(count=AuditHead.count + events)
                           .returning(AuditHead.last_hash)
                           .execution_options(synchronize_session=False)).scalar()
    if last_hash is None:
        db.execute(insert(AuditHead).values(id=1, last_hash=GENESIS, count=events))
        return GENESIS
    return last_hash


def move_head(db: Session | Connection, last_hash: str) -> None:
    """The head now names the last event appended (its lock is the caller's, from claim_head)."""
    db.execute(update(AuditHead).where(AuditHead.id == 1).values(last_hash=last_hash)
               .execution_options(synchronize_session=False))


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
    """Append an event in the caller's transaction: three statements (claim the head, insert
    the event, move the head), every other writer waiting from the first to the commit."""
    event = AuditEvent(tenant_id=tenant_id, at=utcnow(), actor=actor, action=action,
                       subject_type=subject_type, subject_id=subject_id,
                       data=json.loads(json.dumps(data or {}, default=str)),
                       prev_hash=claim_head(db))
    event.hash = event_hash(event)
    db.add(event)
    db.flush()
    move_head(db, event.hash)
    webhooks.enqueue(db, event)  # announced to subscribers once this transaction commits
    return event


@dataclass
class Rehashed:
    """What re-hashing a stretch of the chain found."""

    broken_seq: int | None  # the first event whose link or hash does not match
    broken_tenant_id: str | None
    count: int  # events that matched, before the broken one (if any)
    last_seq: int  # the last event that matched (the starting point if none did)
    last_hash: str


def _chained_columns(db: Session) -> tuple:
    """The chained fields as plain columns. On PostgreSQL the server writes ``at`` in the
    hash's ISO form and hands ``data`` over as its stored JSON text, which the stdlib decoder
    reads faster than the driver's per-row conversion (the same values: a test holds them to
    :func:`event_hash`); elsewhere ``at`` comes back as a datetime, formatted here."""
    if db.get_bind().dialect.name == "postgresql":
        at = func.to_char(func.timezone("UTC", AuditEvent.at),
                          'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')
    else:
        at = AuditEvent.at
    return (AuditEvent.seq, AuditEvent.tenant_id, at, AuditEvent.actor, AuditEvent.action,
            AuditEvent.subject_type, AuditEvent.subject_id, cast(AuditEvent.data, Text),
            AuditEvent.prev_hash, AuditEvent.hash)


def rehash(db: Session, after_seq: int = 0, prev: str = GENESIS, limit: int | None = None
           ) -> Rehashed:
    """Re-compute the chain after event ``after_seq`` (whose hash is ``prev``; 0 and GENESIS:
    from the start), streaming plain rows, at most ``limit`` events; stop at the first event
    whose link or hash does not match."""
    query = select(*_chained_columns(db)).where(AuditEvent.seq > after_seq) \
        .order_by(AuditEvent.seq)
    if limit is not None:
        query = query.limit(limit)
    # Core rows, not ORM ones (building those was most of a verification), streamed.
    rows = db.connection().execute(query.execution_options(yield_per=10_000))
    checked, last_seq, decode = 0, after_seq, _DECODE
    try:
        for seq, tenant_id, at, actor, action, subject_type, subject_id, data, prev_hash, \
                stored in rows:
            if not isinstance(at, str):
                at = _iso(at)
            if prev_hash != prev or stored != _hash_of(prev_hash, at, tenant_id, actor, action,
                                                       subject_type, subject_id, decode(data)):
                return Rehashed(seq, tenant_id, checked, last_seq, prev)
            prev, last_seq, checked = stored, seq, checked + 1
    finally:
        rows.close()
    return Rehashed(None, None, checked, last_seq, prev)


def chain_head(db: Session) -> dict[str, Any]:
    """The last event's sequence number and hash: what a receipt is signed under, so that a
    later rewrite of any event up to it (hashes recomputed and all) no longer matches."""
    last = db.execute(select(AuditEvent.seq, AuditEvent.hash)
                      .order_by(AuditEvent.seq.desc()).limit(1)).first()
    return {"seq": last.seq, "hash": last.hash} if last else {"seq": 0, "hash": GENESIS}
