from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy.orm import Session

from app.core.auth import bearer, current_principal, unauthorized
from app.core.db import get_db
from app.core.openapi import ONE_RESOURCE, VALIDATED, problems
from app.core.pagination import Page, PageParams, page_of, page_params
from app.jobs import service
from app.jobs.schemas import JobOut
from app.tenants.service import Principal

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]


@router.get("", response_model=Page[JobOut], responses=VALIDATED)
def list_jobs(
    model_id: str | None = Query(None),
    status: Status | None = Query(None),
    page: PageParams = Depends(page_params),
    db: Session = Depends(get_db),
    principal: Principal = Depends(current_principal),
):
    rows = service.list_jobs(db, principal, page, model_id, status)
    return page_of(rows, page, key=lambda j: j.id, convert=JobOut.of)


@router.get("/{job_id}", response_model=JobOut, responses=ONE_RESOURCE)
async def get_job(job_id: str,
                  credentials: HTTPAuthorizationCredentials | None = Depends(bearer)):
    # Polled by every waiting client: the key and the job in one query on one thread, not a
    # session, two ORM loads and a thread hop for each dependency.
    if credentials is None:
        raise unauthorized("missing bearer token")
    job = await run_in_threadpool(service.poll_job, credentials.credentials, job_id)
    return Response(job.model_dump_json(), media_type="application/json")


@router.post("/{job_id}/cancel", status_code=202, response_model=JobOut,
             responses=problems(401, 404, 409, 422))
def cancel_job(job_id: str, db: Session = Depends(get_db),
               principal: Principal = Depends(current_principal)):
    job = service.cancel_job(db, principal, job_id)
    return JSONResponse(jsonable_encoder(JobOut.of(job)), status_code=202,
                        headers={"Location": f"/v1/jobs/{job.id}"})
