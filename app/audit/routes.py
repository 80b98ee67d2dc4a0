from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit.service import first_broken_event
from app.audit.tables import AuditEvent
from app.core.auth import current_principal
from app.core.db import get_db
from app.core.openapi import AUTHENTICATED, VALIDATED
from app.core.pagination import Page, PageParams, number_page_params, page_of
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
    valid: bool
    checked: int
    first_invalid_seq: int | None


@router.get("", response_model=Page[AuditEventOut], responses=VALIDATED)
def list_events(page: PageParams = Depends(number_page_params), db: Session = Depends(get_db),
                principal: Principal = Depends(current_principal)):
    query = select(AuditEvent).where(AuditEvent.tenant_id == principal.tenant_id)
    if page.after:
        query = query.where(AuditEvent.seq > int(page.after))
    rows = list(db.scalars(query.order_by(AuditEvent.seq).limit(page.limit + 1)))
    return page_of(rows, page, key=lambda e: e.seq, convert=AuditEventOut.of)


@router.get("/verify", response_model=ChainVerdict, responses=AUTHENTICATED)
def verify_chain(db: Session = Depends(get_db), _: Principal = Depends(current_principal)):
    broken, checked = first_broken_event(db)
    return ChainVerdict(valid=broken is None, checked=checked,
                        first_invalid_seq=broken.seq if broken else None)
