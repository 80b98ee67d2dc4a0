from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core.auth import current_principal
from app.core.db import get_db, retry_in_session
from app.core.idempotency import Idempotency, fingerprint, idempotency_key
from app.core.openapi import AUTHENTICATED, ONE_RESOURCE, VALIDATED, problems
from app.core.pagination import Page, PageParams, deadline_page_params, page_of
from app.deletion_requests import receipts, service
from app.deletion_requests.schemas import (
    DeletionRequestIn,
    DeletionRequestOut,
    PublicKeyOut,
    SignedDocument,
)
from app.jobs.service import dispatch
from app.jobs.tables import Job
from app.models.service import get_model
from app.tenants.service import Principal

router = APIRouter(tags=["deletion requests"])


@router.post("/v1/models/{model_id}/deletion-requests", status_code=202,
             response_model=DeletionRequestOut, responses=problems(400, 401, 404, 413, 422),
             summary="Ask the model to forget samples, whole classes, or a subject's data")
def create_deletion_request(
    model_id: str,
    body: DeletionRequestIn,
    key: str | None = Depends(idempotency_key),
    db: Session = Depends(get_db),
    principal: Principal = Depends(current_principal),
):
    def create():
        idem = Idempotency(db, principal.tenant_id, key,
                           fingerprint({"model_id": model_id, **body.model_dump(mode="json")}))
        if replay := idem.replay():
            return replay, None
        model = get_model(db, principal, model_id)
        request, job, new_job = service.create_request(db, principal, model, body)
        response = idem.commit(202, DeletionRequestOut.of(request, job), f"/v1/jobs/{job.id}")
        fresh = new_job and response.headers.get("Idempotent-Replayed") is None
        return response, job if fresh else None

    # A request that lost a lock race with a worker is run again, never answered with 500.
    response, job_to_send = retry_in_session(db, create)
    if job_to_send is not None:  # a request that joined a waiting job adds no message
        dispatch(job_to_send)
    return response


@router.get("/v1/deletion-requests", response_model=Page[DeletionRequestOut],
            responses=VALIDATED, summary="Deletion requests, most urgent deadline first")
def list_deletion_requests(
    model_id: str | None = Query(None),
    status: str | None = Query(None, pattern="^(received|scheduled|completed|rejected|failed)$"),
    subject: str | None = Query(None),
    overdue: bool = Query(False, description="Only open requests past their deadline."),
    page: PageParams = Depends(deadline_page_params),
    db: Session = Depends(get_db),
    principal: Principal = Depends(current_principal),
):
    rows = service.list_requests(db, principal, page, model_id=model_id, status=status,
                                 subject=subject, overdue=overdue)
    jobs = {job.id: job for job in db.scalars(
        select(Job).where(Job.id.in_({r.job_id for r in rows if r.job_id})))}
    return page_of(rows, page, key=service.request_cursor,
                   convert=lambda r: DeletionRequestOut.of(r, jobs.get(r.job_id)))


@router.get("/v1/deletion-requests/{request_id}", response_model=DeletionRequestOut,
            responses=ONE_RESOURCE)
def get_deletion_request(request_id: str, db: Session = Depends(get_db),
                         principal: Principal = Depends(current_principal)):
    request = service.get_request(db, principal, request_id)
    job = db.get(Job, request.job_id) if request.job_id else None
    return DeletionRequestOut.of(request, job)


@router.get("/v1/deletion-requests/{request_id}/receipt", response_model=SignedDocument,
            responses=problems(401, 404, 409, 422),
            summary="The signed receipt of a completed request")
def get_receipt(request_id: str, db: Session = Depends(get_db),
                principal: Principal = Depends(current_principal)):
    request = service.get_request(db, principal, request_id)
    receipt = receipts.signed_receipt(db, request)
    audit.record(db, "receipt.issued", "deletion_request", request.id,
                 tenant_id=principal.tenant_id, actor=principal.key_id,
                 data={"key_id": receipt["key_id"]})
    db.commit()
    return receipt


@router.get("/v1/keys/receipt", response_model=PublicKeyOut, responses=AUTHENTICATED,
            summary="The public key that verifies receipts")
def receipt_key(_: Principal = Depends(current_principal)):
    return receipts.public_key_document()
