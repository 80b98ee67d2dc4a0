from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit.service import chain_head
from app.audit.tables import AuditEvent
from app.audit.verification import check_chain
from app.core.auth import current_principal
from app.core.db import get_db, utcnow
from app.core.errors import invalid
from app.core.openapi import AUTHENTICATED, VALIDATED
from app.core.pagination import Page, PageParams, number_page_params, page_of
from app.deletion_requests import receipts
from app.deletion_requests.schemas import SignedDocument
from app.tenants.service import Principal

router = APIRouter(prefix="/v1/audit", tags=["audit"])


class AuditEventOut(BaseModel):
    seq: int
    at: datetime
    actor: str | None
    action: str
    subject_type: str
    subject_id: str
    data: dict[str, Any]
    prev_hash: str
    hash: str

    @classmethod
    def of(cls, event) -> AuditEventOut:
        return cls.model_validate(event, from_attributes=True)


class ChainVerdict(BaseModel):
    """Incremental by default: only the events after the latest signed checkpoint that still
    holds are re-hashed; those up to it are trusted to have verified when it was signed. An
    event before it changed in place (its stored hash kept) is found only by ``full=true``; a
    rewrite that recomputed the hashes is found either way (the checkpoint no longer
    matches)."""

    valid: bool
    checked: int = Field(description="This tenant's events the verdict covers (the chain "
                                     "holds every tenant's; their volume is not shown): those "
                                     "up to `verified_from_seq`, verified when that checkpoint "
                                     "was signed, and those re-hashed now. None from the first "
                                     "event that does not match on, nor after the last signed "
                                     "checkpoint that holds when a later one does not.")
    first_invalid_seq: int | None = Field(
        description="The first event that does not match, when it is this tenant's.")
    anchor_matches: bool | None = Field(
        None, description="Whether the event the given anchor names still has the anchor's "
                          "hash (None: no anchor given). False means the trail was rewritten "
                          "after the anchor was signed, even if every hash was recomputed.")
    full: bool = Field(False, description="Whether every event was re-hashed from the genesis "
                                          "(`full=true`), checkpoints not relied on.")
    verified_from_seq: int = Field(
        0, description="Re-hashing started after this event: the latest signed checkpoint "
                       "that still holds (0: the genesis, always with `full=true`). Events up "
                       "to it are trusted to have verified when it was signed: one changed in "
                       "place since, its stored hash kept, is found only by `full=true`.")
    checkpoint_mismatch_seq: int | None = Field(
        None, description="The earliest signed checkpoint whose event no longer has the "
                          "checkpointed hash (or is gone, or the count of events up to it "
                          "changed): the trail was rewritten after it was signed, even if "
                          "every hash was recomputed, and `valid` is false. A checkpoint "
                          "whose signature does not verify is not trusted, only skipped.")


@router.get("", response_model=Page[AuditEventOut], responses=VALIDATED)
def list_events(page: PageParams = Depends(number_page_params), db: Session = Depends(get_db),
                principal: Principal = Depends(current_principal)):
    query = select(AuditEvent).where(AuditEvent.tenant_id == principal.tenant_id)
    if page.after:
        query = query.where(AuditEvent.seq > int(page.after))
    rows = list(db.scalars(query.order_by(AuditEvent.seq).limit(page.limit + 1)))
    return page_of(rows, page, key=lambda e: e.seq, convert=AuditEventOut.of)


@router.get("/verify", response_model=ChainVerdict, responses=VALIDATED)
def verify_chain(
    anchor_seq: int | None = Query(None, ge=0, le=2**63 - 1, description="`seq` of an anchor "
                                   "(a receipt's `audit_head`, or GET /v1/audit/head)."),
    anchor_hash: str | None = Query(None, pattern="^[0-9a-f]{64}$",
                                    description="`hash` of the same anchor."),
    full: bool = Query(False, description="Re-hash every event from the genesis, not only "
                                          "those after the latest signed checkpoint: the "
                                          "auditor's check, in time proportional to the "
                                          "whole chain."),
    db: Session = Depends(get_db), principal: Principal = Depends(current_principal),
):
    """Re-hash the chain after the latest signed checkpoint that holds (all of it with
    `full=true`), then sign a new checkpoint at its end when it holds and has grown enough."""
    if (anchor_seq is None) != (anchor_hash is None):
        raise invalid("anchor_seq and anchor_hash: give both or neither")
    anchor = (anchor_seq, anchor_hash) if anchor_seq is not None else None
    check = check_chain(db, principal.tenant_id, anchor, full=full)
    return ChainVerdict(**asdict(check))


@router.get("/head", response_model=SignedDocument, responses=AUTHENTICATED,
            summary="The chain's head, signed with the receipt key: an anchor to keep")
def signed_head(db: Session = Depends(get_db), _: Principal = Depends(current_principal)):
    return receipts.sign({"audit_head": chain_head(db), "at": utcnow().isoformat()})
