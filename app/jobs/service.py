"""Jobs as the API sees them: lookup, listing, cancellation, and handing them to workers."""

from __future__ import annotations

import logging

from sqlalchemy import and_, bindparam, func, select
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core.auth import unauthorized
from app.core.db import get_engine, lock_row, utcnow
from app.core.errors import Problem, not_found
from app.core.pagination import PageParams
from app.jobs.schemas import JobOut
from app.jobs.tables import CANCELLED, FINAL_STATES, QUEUED, Job
from app.tenants.service import LIVE_KEY, Principal, live_key_params
from app.tenants.tables import ApiKey

log = logging.getLogger(__name__)


def get_job(db: Session, principal: Principal, job_id: str) -> Job:
    job = db.get(Job, job_id)
    if job is None or job.tenant_id != principal.tenant_id:
        raise not_found("job", job_id)
    return job


# What a poll returns, the key checked in the same query, read as one row: the forget set's
# size, not the rows themselves. Built once: building the statement cost more than running it.
_POLL = (select(ApiKey.id.label("key_id"), Job.id, Job.status, Job.progress, Job.phase,
                Job.model_id, Job.method, Job.params, Job.fallback, Job.gate,
                func.coalesce(func.json_array_length(Job.forget_rows), 0)
                .label("num_forget_samples"),
                Job.forget_classes, Job.base_version, Job.result_version, Job.metrics,
                Job.error, Job.attempts, Job.cancel_requested, Job.created_at, Job.started_at,
                Job.finished_at)
         .select_from(ApiKey)
         .outerjoin(Job, and_(Job.id == bindparam("job_id"),
                              Job.tenant_id == ApiKey.tenant_id))
         .where(LIVE_KEY)
         .limit(1))


def poll_job(token: str, job_id: str) -> JobOut:
    """The job as its tenant sees it: the hot path of every client waiting on a job, so one
    round trip and no ORM objects or session."""
    with get_engine().connect() as connection:
        row = connection.execute(_POLL, {"job_id": job_id, **live_key_params(token)}).first()
    if row is None:
        raise unauthorized("invalid or revoked token")
    if row.id is None:
        raise not_found("job", job_id)
    return JobOut.model_validate(row._mapping)


def list_jobs(db: Session, principal: Principal, page: PageParams,
              model_id: str | None, status: str | None) -> list[Job]:
    query = select(Job).where(Job.tenant_id == principal.tenant_id)
    if model_id:
        query = query.where(Job.model_id == model_id)
    if status:
        query = query.where(Job.status == status)
    if page.after:
        query = query.where(Job.id > page.after)
    return list(db.scalars(query.order_by(Job.id).limit(page.limit + 1)))


def cancel_job(db: Session, principal: Principal, job_id: str) -> Job:
    """A queued job is cancelled at once; a running one stops at its next progress step."""
    job = db.get(Job, job_id, populate_existing=True) if lock_row(db, Job, job_id) else None
    if job is None or job.tenant_id != principal.tenant_id:
        raise not_found("job", job_id)
    if job.status in FINAL_STATES:
        raise Problem(409, f"job {job_id!r} has already {job.status}", slug="job-finished")
    job.cancel_requested = True
    if job.status == QUEUED:
        from app.deletion_requests.service import settle_requests_of

        job.status, job.finished_at = CANCELLED, utcnow()
        settle_requests_of(db, job)  # a cancelled job's requests are rejected, not retried
    audit.record(db, "job.cancel_requested", "job", job.id, tenant_id=job.tenant_id,
                 actor=principal.key_id, data={"status": job.status})
    db.commit()
    return job


def dispatch(job: Job) -> None:
    """Hand a committed job to a worker. Never raises: a job that misses its message here is
    picked up by the worker's sweeper, because the row, not the message, is the truth."""
    from worker.dispatch import send_job

    delay = (job.not_before - utcnow()).total_seconds() if job.not_before else 0.0
    try:
        send_job(job.id, delay)
    except Exception:  # noqa: BLE001 - the sweeper recovers; the request must not fail
        log.exception("could not dispatch job %s; the sweeper will", job.id)
