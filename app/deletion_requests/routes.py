from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from sqlalchemy.orm import Session

from app.core.auth import current_principal
from app.core.db import get_db
from app.core.idempotency import Idempotency, fingerprint, idempotency_key
from app.core.pagination import Page, PageParams, page_of, page_params
from app.deletion_requests import service
from app.deletion_requests.schemas import DeletionRequestIn, DeletionRequestOut
from app.jobs.service import dispatch
from app.jobs.tables import Job
from app.models.service import get_model
from app.tenants.service import Principal

router = APIRouter(tags=["deletion requests"])


@router.post("/v1/models/{model_id}/deletion-requests", status_code=202,
             response_model=DeletionRequestOut,
             summary="Ask the model to forget samples or whole classes")
def create_deletion_request(
    model_id: str,
    body: DeletionRequestIn,
    key: str | None = Depends(idempotency_key),
    db: Session = Depends(get_db),
    principal: Principal = Depends(current_principal),
):
    idem = Idempotency(db, principal.tenant_id, key,
                       fingerprint({"model_id": model_id, **body.model_dump(mode="json")}))
    if replay := idem.replay():
        return replay
    model = get_model(db, principal, model_id)
    request, job = service.create_request(db, principal, model, body)
    response = idem.commit(202, DeletionRequestOut.of(request, job), f"/v1/jobs/{job.id}")
    if response.headers.get("Idempotent-Replayed") is None:
        dispatch(job.id)
    return response


@router.get("/v1/deletion-requests", response_model=Page[DeletionRequestOut])
def list_deletion_requests(
    model_id: str | None = Query(None),
    status: str | None = Query(None),
    page: PageParams = Depends(page_params),
    db: Session = Depends(get_db),
    principal: Principal = Depends(current_principal),
):
    rows = service.list_requests(db, principal, page, model_id, status)
    return page_of(rows, page, key=lambda r: r.id, convert=DeletionRequestOut.of)


@router.get("/v1/deletion-requests/{request_id}", response_model=DeletionRequestOut)
def get_deletion_request(request_id: str, db: Session = Depends(get_db),
                         principal: Principal = Depends(current_principal)):
    request = service.get_request(db, principal, request_id)
    job = db.get(Job, request.job_id) if request.job_id else None
    return DeletionRequestOut.of(request, job)
