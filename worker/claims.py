"""Guarded job-state transitions: the SQL row decides who runs a job, never the message.

Every transition is a conditional update inside a transaction that holds the job's model and
the job locked, so a redelivered or duplicated message can never run a finished job again, and
two runs of one job can never both commit a version. Locks are always taken model first, then
job (then the audit chain's head), in the API as here, so no two transactions wait on each
other in a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import Enum

from sqlalchemy import exists, or_, select, update
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core.config import get_settings
from app.core.db import lock_row, utcnow
from app.jobs.tables import CANCELLED, FAILED, FINAL_STATES, QUEUED, RUNNING, Job
from app.models.tables import Model


class Verdict(Enum):
    CLAIMED = "claimed"
    BUSY = "busy"  # another run holds it or the model; ask again later
    DONE = "done"  # finished (or gone): drop the message


@dataclass(frozen=True)
class Claim:
    verdict: Verdict
    job_id: str
    attempt: int = 0
    base_version: int | None = None
    model_id: str | None = None


def lease_cutoff():
    return utcnow() - timedelta(seconds=get_settings().job_lease_seconds)


def _alive(job: Job) -> bool:
    return job.heartbeat_at is not None and job.heartbeat_at > lease_cutoff()


def _model_busy(db: Session, job: Job) -> bool:
    """Jobs on one model run one at a time, oldest first."""
    other_running = select(Job.id).where(
        Job.model_id == job.model_id, Job.id != job.id, Job.status == RUNNING,
        Job.heartbeat_at > lease_cutoff())
    older_queued = select(Job.id).where(
        Job.model_id == job.model_id, Job.status == QUEUED, Job.created_at < job.created_at)
    return bool(db.scalar(select(exists(other_running)))
                or db.scalar(select(exists(older_queued))))


def claim(db: Session, job_id: str, worker: str) -> Claim:
    """queued → running, or take over a running job whose worker stopped heart-beating."""
    model_id = db.scalar(select(Job.model_id).where(Job.id == job_id))
    if model_id is None or not lock_row(db, Model, model_id) or not lock_row(db, Job, job_id):
        return Claim(Verdict.DONE, job_id)
    job = db.get(Job, job_id, populate_existing=True)
    if job.status in FINAL_STATES:
        return Claim(Verdict.DONE, job_id)
    job.dispatched_at = utcnow()
    if job.status == RUNNING and _alive(job):
        return Claim(Verdict.BUSY, job_id)
    if job.status == QUEUED and job.not_before and job.not_before > utcnow():
        return Claim(Verdict.BUSY, job_id)  # still collecting requests to coalesce
    model = db.get(Model, model_id, populate_existing=True)
    if _model_busy(db, job):
        return Claim(Verdict.BUSY, job_id)
    if job.attempts >= get_settings().job_max_attempts:
        fail(db, job, f"gave up after {job.attempts} attempts: the worker running it was lost",
             title="Worker lost")
        return Claim(Verdict.DONE, job_id)
    takeover = job.status == RUNNING
    now = utcnow()
    job.status, job.worker, job.heartbeat_at = RUNNING, worker, now
    job.attempts += 1
    job.started_at = job.started_at or now
    job.base_version, job.progress, job.phase = model.latest_version, 0.0, "starting"
    audit.record(db, "job.started", "job", job.id, tenant_id=job.tenant_id, actor=worker,
                 data={"attempt": job.attempts, "base_version": job.base_version,
                       "takeover": takeover})
    return Claim(Verdict.CLAIMED, job_id, job.attempts, job.base_version, model_id)


def lock_model(db: Session, claim_: Claim) -> None:
    lock_row(db, Model, claim_.model_id)


def owned(db: Session, claim_: Claim) -> Job | None:
    """The job, locked (its model first), if this claim still holds it (no takeover or
    cancellation since)."""
    lock_model(db, claim_)
    still_ours = db.execute(update(Job).where(
        Job.id == claim_.job_id, Job.status == RUNNING, Job.attempts == claim_.attempt,
    ).values(heartbeat_at=utcnow())).rowcount
    return db.get(Job, claim_.job_id, populate_existing=True) if still_ours else None


def heartbeat(db: Session, claim_: Claim, progress: float | None = None,
              phase: str | None = None) -> tuple[bool, bool]:
    """Refresh the lease; ``(still_owned, cancel_requested)``."""
    values: dict = {"heartbeat_at": utcnow()}
    if progress is not None:
        values["progress"] = progress
    if phase is not None:
        values["phase"] = phase
    result = db.execute(update(Job).where(
        Job.id == claim_.job_id, Job.status == RUNNING, Job.attempts == claim_.attempt,
    ).values(**values))
    if result.rowcount == 0:
        return False, False
    cancel = db.scalar(select(Job.cancel_requested).where(Job.id == claim_.job_id))
    return True, bool(cancel)


def fail(db: Session, job: Job, detail: str, title: str = "Unlearning failed", *,
         slug: str = "job-failed", status: int = 500, extra: dict | None = None) -> list[str]:
    """Mark the job failed with an RFC 9457 problem (``extra`` adds members to it); its
    requests are scheduled again (the returned jobs) or fail."""
    from app.deletion_requests.service import settle_requests_of

    job.status, job.finished_at = FAILED, utcnow()
    job.error = {"type": f"https://lethe.dev/problems/{slug}", "title": title,
                 "status": status, "detail": detail, **(extra or {})}
    audit.record(db, "job.failed", "job", job.id, tenant_id=job.tenant_id, actor=job.worker,
                 data={"detail": detail, "attempts": job.attempts, **(extra or {})})
    return settle_requests_of(db, job)


def cancel(db: Session, job: Job) -> None:
    from app.deletion_requests.service import settle_requests_of

    job.status, job.finished_at = CANCELLED, utcnow()
    settle_requests_of(db, job)
    audit.record(db, "job.cancelled", "job", job.id, tenant_id=job.tenant_id, actor=job.worker,
                 data={"progress": job.progress})


def requeue(db: Session, job: Job, reason: str, *, refund_attempt: bool = False) -> None:
    """Put a job back in the queue: after a transient error, or (refunding the attempt it
    used) because its worker is shutting down."""
    job.status, job.worker, job.heartbeat_at, job.phase = QUEUED, None, None, None
    if refund_attempt:
        job.attempts -= 1
    audit.record(db, "job.requeued", "job", job.id, tenant_id=job.tenant_id,
                 data={"reason": reason, "attempts": job.attempts})


def stalled_jobs(db: Session) -> list[str]:
    """Jobs whose queue message may be lost: never picked up, or their worker died."""
    settings = get_settings()
    quiet_since = utcnow() - timedelta(seconds=settings.redispatch_after_seconds)
    stale = lease_cutoff()
    queued = select(Job.id).where(Job.status == QUEUED, or_(
        Job.dispatched_at.is_(None), Job.dispatched_at < quiet_since))
    dead = select(Job.id).where(Job.status == RUNNING, Job.heartbeat_at < stale,
                                Job.dispatched_at < stale)
    return list(db.scalars(queued.union(dead)))
