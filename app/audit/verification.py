"""Verifying the audit chain: incrementally, from the latest signed checkpoint that still holds.

Re-hashing the whole chain costs time in proportion to its length (tens of seconds for a
million events). So a verification that finds the chain intact signs a *checkpoint*: "the
chain verified up to event ``seq``, whose hash was ``hash``, ``count`` events in all", with
the receipt key (:mod:`app.deletion_requests.receipts`; created on first use when none is
configured, as for receipts). The next verification

1. checks every checkpoint against its event. A checkpoint whose signature verifies but whose
   event no longer has the checkpointed hash (or is gone, or whose count of events up to it
   changed) is evidence that the trail was rewritten after it was signed, hashes recomputed
   and all: the verdict is invalid (``checkpoint_mismatch_seq``). A checkpoint whose signature
   does not verify (forged, corrupt, or signed with a key since replaced) is not trusted: it is
   skipped, as if it did not exist.
2. takes the newest trusted checkpoint that still holds, before any mismatching one, as its
   base (``verified_from_seq``; 0, the genesis, when there is none), and re-hashes only the
   events after it, the first of them linked to the checkpoint's hash.
3. signs a new checkpoint at the new end when the chain held and moved by at least
   ``audit_checkpoint_every`` events since the base.

``full=True`` re-hashes from the genesis instead (step 1 still runs): the auditor's check.

The limitation, stated plainly: incremental verification trusts that the events up to its base
were intact when the checkpoint was signed, and does not look at them again. An event before
the checkpoint changed *in place*, its stored hash kept, is not found incrementally (its own
hash no longer matches its content, but nobody re-computes it): ``full=True`` finds it. A
rewrite that recomputes the hashes from that event on is found either way, because the
checkpointed event's hash no longer matches. Someone holding both the database and the
receipt key can forge checkpoints as they can forge receipts; an auditor's own anchor (a
receipt or a signed head kept elsewhere) and ``full=True`` do not depend on the checkpoints.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import func, or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.audit.service import GENESIS, Rehashed, rehash
from app.audit.tables import AuditCheckpoint, AuditEvent
from app.core.config import get_settings
from app.core.db import utcnow
from app.deletion_requests import receipts

log = logging.getLogger(__name__)

# What one pass of the workers' upkeep re-hashes at most (a few seconds): a long chain that was
# never checkpointed is covered over several passes, each signing where it got to.
UPKEEP_MAX_EVENTS = 200_000


@dataclass
class ChainCheck:
    valid: bool
    checked: int  # the asking tenant's events the verdict covers: other tenants' volume is theirs
    first_invalid_seq: int | None  # when the first broken event is the tenant's own
    anchor_matches: bool | None  # None when no anchor was given
    full: bool = False  # re-hashed from the genesis, checkpoints not relied on
    verified_from_seq: int = 0  # re-hashing started after this event (0: the genesis)
    checkpoint_mismatch_seq: int | None = None  # a signed checkpoint there no longer holds


def checkpoint_payload(seq: int, hash: str, count: int, created_at: datetime
                       ) -> dict[str, Any]:
    """What a checkpoint's signature covers (as receipts: the canonical JSON of this)."""
    return {"audit_checkpoint": {
        "seq": seq, "hash": hash, "count": count,
        "created_at": created_at.astimezone(UTC).isoformat(timespec="microseconds")}}


def _public_key() -> Ed25519PublicKey | None:
    try:
        return receipts.signing_key().public_key()
    except (OSError, ValueError, RuntimeError):  # no key and none can be created
        log.exception("the receipt key is unusable: audit checkpoints are neither trusted "
                      "nor written, and verification re-hashes the whole chain")
        return None


def is_signed(checkpoint: AuditCheckpoint, public_key: Ed25519PublicKey) -> bool:
    document = {"receipt": checkpoint_payload(checkpoint.seq, checkpoint.hash,
                                              checkpoint.count, checkpoint.created_at),
                "algorithm": receipts.ALGORITHM, "signature": checkpoint.signature}
    return receipts.verify_receipt(document, public_key)


@dataclass
class _Base:
    seq: int = 0
    hash: str = GENESIS
    count: int = 0


def _events_up_to(db: Session, seq: int) -> int:
    return db.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.seq <= seq))


def _checkpoints(db: Session, public_key: Ed25519PublicKey | None) -> tuple[_Base, int | None]:
    """The newest trusted checkpoint that still holds, before any that does not (the base),
    and the earliest trusted checkpoint that no longer holds (None: none)."""
    if public_key is None:
        return _Base(), None
    current = select(AuditEvent.hash).where(AuditEvent.seq == AuditCheckpoint.seq) \
        .scalar_subquery()
    mismatch = None
    stale = select(AuditCheckpoint).where(or_(current.is_(None), current != AuditCheckpoint.hash))
    for checkpoint in db.scalars(stale.order_by(AuditCheckpoint.seq)):
        if is_signed(checkpoint, public_key):
            mismatch = checkpoint.seq
            break
        log.warning("audit checkpoint %s (seq %s) has no valid signature: not trusted",
                    checkpoint.id, checkpoint.seq)
    holding = select(AuditCheckpoint).where(current == AuditCheckpoint.hash) \
        .order_by(AuditCheckpoint.seq.desc(), AuditCheckpoint.id.desc())
    if mismatch is not None:
        holding = holding.where(AuditCheckpoint.seq < mismatch)
    for page in itertools.count():  # pages: the first checkpoint tried is nearly always it
        batch = db.scalars(holding.offset(page * 20).limit(20)).all()
        for checkpoint in batch:
            if not is_signed(checkpoint, public_key):
                log.warning("audit checkpoint %s (seq %s) has no valid signature: not trusted",
                            checkpoint.id, checkpoint.seq)
                continue
            if _events_up_to(db, checkpoint.seq) != checkpoint.count:  # events removed
                mismatch = checkpoint.seq
                continue
            return _Base(checkpoint.seq, checkpoint.hash, checkpoint.count), mismatch
        if len(batch) < 20:
            break
    return _Base(), mismatch


def _sign_checkpoint(db: Session, base: _Base, start: _Base, done: Rehashed) -> None:
    """A new checkpoint at the end of what was just verified (from ``start``), if that is at
    least ``audit_checkpoint_every`` events past the trusted ``base``."""
    count = start.count + done.count
    if count - base.count < get_settings().audit_checkpoint_every:
        return
    at = utcnow()
    signed = receipts.sign(checkpoint_payload(done.last_seq, done.last_hash, count, at))
    try:
        db.add(AuditCheckpoint(seq=done.last_seq, hash=done.last_hash, count=count,
                               created_at=at, key_id=signed["key_id"],
                               signature=signed["signature"]))
        db.commit()
    except SQLAlchemyError:  # the verdict stands; the next verification signs one
        db.rollback()
        log.exception("could not write the audit checkpoint at seq %s", done.last_seq)


def check_chain(db: Session, tenant_id: str | None, anchor: tuple[int, str] | None = None,
                *, full: bool = False, limit: int | None = None) -> ChainCheck:
    """Verify the chain for one tenant, incrementally from the latest signed checkpoint that
    holds (``full``: from the genesis), and that the event an earlier signed anchor names
    still has the hash it had then. Re-hash at most ``limit`` events (the verdict then covers
    the chain up to where it stopped). ``tenant_id`` None is the service itself: it is shown
    the first broken event whoever's it is, and ``checked`` is 0.

    When the chain holds, a new checkpoint is signed and committed at its end (see the module
    docstring: what incremental verification trusts, and what only ``full`` finds)."""
    public_key = _public_key()
    base, mismatch = _checkpoints(db, public_key)
    start = _Base() if full else base
    done = rehash(db, start.seq, start.hash, limit)

    # The tenant's events the verdict covers: those up to the last event re-hashed, before the
    # first broken one, and when a signed checkpoint no longer holds, only those up to the
    # last one that does (the rewrite is somewhere after it).
    bound = min(seq for seq in (done.last_seq + 1, done.broken_seq,
                                base.seq + 1 if mismatch is not None else None)
                if seq is not None)
    checked = 0
    if tenant_id is not None:
        checked = db.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.tenant_id == tenant_id, AuditEvent.seq < bound))

    anchor_matches = None
    if anchor is not None:
        seq, expected = anchor
        anchor_matches = db.scalar(select(AuditEvent.hash).where(AuditEvent.seq == seq)) == \
            expected
    first_invalid = done.broken_seq if tenant_id is None or done.broken_tenant_id == tenant_id \
        else None
    valid = done.broken_seq is None and mismatch is None and anchor_matches is not False
    if valid and public_key is not None:
        _sign_checkpoint(db, base, start, done)
    return ChainCheck(valid=valid, checked=checked, first_invalid_seq=first_invalid,
                      anchor_matches=anchor_matches, full=full, verified_from_seq=start.seq,
                      checkpoint_mismatch_seq=mismatch)


def extend_checkpoints(db: Session, max_events: int = UPKEEP_MAX_EVENTS) -> ChainCheck | None:
    """The workers' upkeep: verify incrementally (at most ``max_events``) and sign a checkpoint
    where it got to, so that an API verification has little left to re-hash. When nothing is
    to be signed this re-hashes only the tail since the last checkpoint (fewer than
    ``audit_checkpoint_every`` events).

    Only where the receipt key already exists (None otherwise): a worker given no key (the one
    in docker-compose.yml signs nothing) must not make one of its own, whose checkpoints the
    API would not trust."""
    if not get_settings().resolved_receipt_key_file.exists():
        return None
    check = check_chain(db, None, full=False, limit=max_events)
    if not check.valid:
        log.error("the audit chain does not verify (first broken event %s, signed checkpoint "
                  "no longer holding at %s): ask GET /v1/audit/verify?full=true",
                  check.first_invalid_seq, check.checkpoint_mismatch_seq)
    return check
