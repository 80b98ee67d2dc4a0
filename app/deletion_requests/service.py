"""Deletion requests: resolve what to forget, check it, and schedule the unlearning job."""

from __future__ import annotations

from datetime import timedelta

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core.config import get_settings
from app.core.db import lock_row, utcnow
from app.core.errors import invalid, not_found
from app.core.ids import new_id
from app.core.pagination import PageParams
from app.datasets.tables import Dataset, Sample
from app.deletion_requests.schemas import DeletionRequestIn
from app.deletion_requests.tables import DeletionRequest
from app.jobs.tables import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, Job
from app.models.service import validation_problem
from app.models.tables import ForgottenSample, Model
from app.tenants.service import Principal
from worker.engine.methods import METHODS, MethodParams
from worker.engine.registry import UnknownEntryError

SCHEDULED, COMPLETED = "scheduled", "completed"
REQUEST_STATUS_OF_JOB = {SUCCEEDED: COMPLETED, FAILED: "failed", CANCELLED: "cancelled"}
LOOKUP_CHUNK = 900  # stays under SQLite's bound-parameter limit
SHOWN_IDS = 20


def resolve_params(method: str, params: dict) -> MethodParams:
    try:
        method_cls = METHODS.get(method)
    except UnknownEntryError as exc:
        raise invalid(f"method: {exc}") from None
    try:
        return method_cls.Params.model_validate(params)
    except ValidationError as exc:
        raise validation_problem("params", exc) from None


def _listed(ids: list[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:SHOWN_IDS])
    return shown + (f" and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else "")


def unavailable_rows(db: Session, model: Model) -> set[int]:
    """Rows this model no longer carries, or that a pending job is about to remove."""
    rows = set(db.scalars(select(ForgottenSample.row).where(ForgottenSample.model_id == model.id)))
    for forget_rows in db.scalars(select(Job.forget_rows).where(
            Job.model_id == model.id, Job.status.in_((QUEUED, RUNNING)))):
        rows.update(forget_rows)
    return rows


def rows_of_sample_ids(db: Session, dataset: Dataset, sample_ids: list[str]) -> dict[str, int]:
    wanted = list(dict.fromkeys(sample_ids))
    found: dict[str, int] = {}
    for start in range(0, len(wanted), LOOKUP_CHUNK):
        chunk = wanted[start : start + LOOKUP_CHUNK]
        found.update(db.execute(select(Sample.sample_id, Sample.row).where(
            Sample.dataset_id == dataset.id, Sample.sample_id.in_(chunk))).all())
    unknown = [i for i in wanted if i not in found]
    if unknown:
        raise invalid(f"sample_ids: unknown in dataset {dataset.id}: {_listed(unknown)}",
                      unknown_sample_ids=unknown[:1000])
    return {i: found[i] for i in wanted}


def rows_of_classes(db: Session, dataset: Dataset, classes: list[int]) -> dict[str, int]:
    bad = [c for c in classes if not 0 <= c < dataset.num_classes]
    if bad:
        raise invalid(f"classes: {bad} not in [0, {dataset.num_classes})")
    if len(set(classes)) >= dataset.num_classes:
        raise invalid("classes: cannot forget every class; nothing would be left to retain")
    return dict(db.execute(select(Sample.sample_id, Sample.row).where(
        Sample.dataset_id == dataset.id, Sample.label.in_(sorted(set(classes))))).all())


def forget_set(db: Session, model: Model, body: DeletionRequestIn) -> dict[str, int]:
    dataset = db.get(Dataset, model.dataset_id)
    unavailable = unavailable_rows(db, model)
    if body.classes is not None:
        rows = {i: r for i, r in rows_of_classes(db, dataset, body.classes).items()
                if r not in unavailable}
        if not rows:
            raise invalid(f"classes: every sample of {body.classes} is already forgotten or "
                          "scheduled to be")
        return rows
    rows = rows_of_sample_ids(db, dataset, body.sample_ids)
    already = [i for i, r in rows.items() if r in unavailable]
    if already:
        raise invalid(f"sample_ids: already forgotten or scheduled to be: {_listed(already)}",
                      already_forgotten=already[:1000])
    if len(unavailable) + len(rows) >= dataset.num_train:
        raise invalid("sample_ids: nothing would be left to retain")
    return rows


def create_request(db: Session, principal: Principal, model: Model,
                   body: DeletionRequestIn) -> tuple[DeletionRequest, Job]:
    params = resolve_params(body.method, body.params)
    # Serialise requests on one model so two can never schedule the same sample.
    lock_row(db, Model, model.id)
    rows = forget_set(db, model, body)
    job = Job(id=new_id("job"), tenant_id=principal.tenant_id, model_id=model.id,
              method=body.method, params=params.model_dump(mode="json"),
              forget_rows=sorted(rows.values()), forget_classes=body.classes, status=QUEUED,
              dispatched_at=utcnow())
    db.add(job)
    db.flush()  # the request's foreign key needs the job row first
    received = utcnow()
    request = DeletionRequest(
        id=new_id("dr"), tenant_id=principal.tenant_id, model_id=model.id,
        sample_ids=sorted(rows), classes=body.classes, subject=body.subject, reason=body.reason,
        method=body.method, params=job.params, status=SCHEDULED, job_id=job.id,
        received_at=received,
        deadline=received + timedelta(days=get_settings().deletion_deadline_days))
    db.add(request)
    db.flush()
    audit.record(db, "deletion_request.received", "deletion_request", request.id,
                 tenant_id=principal.tenant_id, actor=principal.key_id,
                 data={"model_id": model.id, "num_samples": len(rows), "classes": body.classes,
                       "method": body.method, "job_id": job.id})
    audit.record(db, "job.queued", "job", job.id, tenant_id=principal.tenant_id,
                 actor=principal.key_id, data={"model_id": model.id, "method": body.method})
    return request, job


def settle_requests_of(db: Session, job: Job) -> None:
    """Give the requests a finished job served the job's outcome."""
    status = REQUEST_STATUS_OF_JOB.get(job.status)
    if status is None:
        return
    for request in db.scalars(select(DeletionRequest).where(DeletionRequest.job_id == job.id)):
        request.status = status
        request.completed_at = job.finished_at if status == COMPLETED else None


def get_request(db: Session, principal: Principal, request_id: str) -> DeletionRequest:
    request = db.get(DeletionRequest, request_id)
    if request is None or request.tenant_id != principal.tenant_id:
        raise not_found("deletion request", request_id)
    return request


def list_requests(db: Session, principal: Principal, page: PageParams, model_id: str | None,
                  status: str | None) -> list[DeletionRequest]:
    query = select(DeletionRequest).where(DeletionRequest.tenant_id == principal.tenant_id)
    if model_id:
        query = query.where(DeletionRequest.model_id == model_id)
    if status:
        query = query.where(DeletionRequest.status == status)
    if page.after:
        query = query.where(DeletionRequest.id > page.after)
    return list(db.scalars(query.order_by(DeletionRequest.id).limit(page.limit + 1)))
