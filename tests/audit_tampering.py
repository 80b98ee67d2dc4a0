"""What someone with write access to the database, but not the receipt key, could do to the
audit trail: the tests that show each kind of tampering is found share it."""

from __future__ import annotations


def rewrite_audit_history(seq: int, data: dict) -> None:
    """Edit event ``seq``'s data, then recompute every later hash and the head, so the chain
    is consistent again."""
    from sqlalchemy import select

    from app.audit.service import GENESIS, event_hash
    from app.audit.tables import AuditEvent, AuditHead
    from app.core.db import session_scope

    with session_scope() as db:
        prev = GENESIS
        for event in db.scalars(select(AuditEvent).order_by(AuditEvent.seq)):
            if event.seq == seq:
                event.data = data
            event.prev_hash = prev
            event.hash = prev = event_hash(event)
        db.get(AuditHead, 1).last_hash = prev
