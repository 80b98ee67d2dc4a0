"""Deletion requests: resolve what to forget, check it, and schedule it, coalesced.

A request is a record with a deadline before it is a job. Requests for one model that arrive
while an earlier job of theirs still waits in the queue (or within the coalescing window) are
merged into that job, so a burst becomes a few versions, not one per request. A request whose
job fails is scheduled again, up to ``request_max_attempts`` times, before it is marked failed.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import ValidationError
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core.config import get_settings
from app.core.db import in_chunks, lock_row, utcnow
from app.core.errors import Problem, invalid, not_found
from app.core.ids import new_id
from app.core.pagination import PageParams
from app.datasets.tables import Dataset, Sample
from app.deletion_requests.schemas import DeletionRequestIn, FallbackStep
from app.deletion_requests.tables import DeletionRequest
from app.jobs.tables import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, Job
from app.models.service import validation_problem
from app.models.tables import ForgottenSample, Model
from app.tenants.service import Principal
from worker.engine.methods import METHODS, MethodParams
from worker.engine.registry import UnknownEntryError

RECEIVED, SCHEDULED, COMPLETED, REJECTED, FAILED_REQUEST = (
    "received", "scheduled", "completed", "rejected", "failed")
OPEN_STATES = (RECEIVED, SCHEDULED)
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


def check_configured_methods() -> None:
    """Refuse to start on a default or fallback method no registry entry has: every request
    naming no method (or no fallback) would otherwise fail on the operator's typo."""
    settings = get_settings()
    configured = {"LETHE_DEFAULT_CHAIN_SAMPLES": settings.default_chain_samples,
                  "LETHE_DEFAULT_CHAIN_CLASSES": settings.default_chain_classes,
                  "LETHE_FALLBACK_METHODS": settings.fallback_methods}
    for variable, names in configured.items():
        for name in names:
            if name not in METHODS:
                raise RuntimeError(f"{variable}: unknown method {name!r}; known: "
                                   f"{', '.join(METHODS.names())}")


def with_method(body: DeletionRequestIn) -> DeletionRequestIn:
    """The request with its method named: when it names none, the first of the service's
    chain for its kind, the rest as its fallback unless it names one. So the job, the request
    and the audit trail record the methods that will run."""
    if body.method is not None:
        return body
    first, *rest = get_settings().default_chain(classes=body.classes is not None)
    fallback = body.fallback if body.fallback is not None else [
        FallbackStep(method=name) for name in rest]
    return body.model_copy(update={"method": first, "fallback": fallback})


def resolve_fallback(body: DeletionRequestIn) -> list[dict]:
    """The chain tried after the request's method, validated now so a bad entry is a 422, not
    a job that fails later; entries equal to an earlier one are dropped."""
    steps = (body.fallback if body.fallback is not None
             else [FallbackStep(method=name) for name in get_settings().fallback_methods])
    chain = [{"method": body.method, "params": resolve_params(body.method, body.params)
              .model_dump(mode="json")}]
    for index, step in enumerate(steps):
        try:
            params = resolve_params(step.method, step.params).model_dump(mode="json")
        except Problem as exc:
            raise invalid(f"fallback[{index}]: {exc.detail}") from None
        entry = {"method": step.method, "params": params}
        if entry not in chain:
            chain.append(entry)
    return chain[1:]


def resolve_gate(overrides: dict | None) -> dict:
    """The service's gate thresholds with the request's overrides applied."""
    try:
        return get_settings().gate.overridden(overrides).model_dump(mode="json")
    except ValidationError as exc:
        raise validation_problem("gate", exc) from None


def _listed(ids: list[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:SHOWN_IDS])
    return shown + (f" and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else "")


def pending_jobs(db: Session, model: Model) -> list[Job]:
    """The model's queued and running jobs, oldest first: read once per request, for what they
    are about to remove and for the waiting one a request may join."""
    return list(db.scalars(select(Job).where(
        Job.model_id == model.id, Job.status.in_((QUEUED, RUNNING))).order_by(Job.created_at)))


def unavailable_rows(db: Session, model: Model, pending: list[Job],
                     among: set[int] | None = None) -> set[int]:
    """Rows this model no longer carries, or that a pending job is about to remove; only those
    ``among`` the given rows when given (a request naming samples need not read the model's
    whole history of forgotten rows, which grows with every request)."""
    forgotten = select(ForgottenSample.row).where(ForgottenSample.model_id == model.id)
    if among is None:
        rows = set(db.scalars(forgotten))
    else:
        rows = {row for chunk in in_chunks(among, LOOKUP_CHUNK)
                for row in db.scalars(forgotten.where(ForgottenSample.row.in_(chunk)))}
    for job in pending:
        rows.update(job.forget_rows if among is None else among.intersection(job.forget_rows))
    return rows


def unavailable_count(db: Session, model: Model, pending: list[Job]) -> int:
    """How many rows this model no longer carries or is about to lose: a pending job's rows
    are never forgotten ones (a request is checked against both; a job's rows become
    forgotten as it leaves the pending states, in one transaction)."""
    forgotten = db.scalar(select(func.count()).select_from(ForgottenSample)
                          .where(ForgottenSample.model_id == model.id))
    return forgotten + sum(len(job.forget_rows) for job in pending)


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


def rows_of_subject(db: Session, dataset: Dataset, subject: str) -> dict[str, int]:
    rows = dict(db.execute(select(Sample.sample_id, Sample.row).where(
        Sample.dataset_id == dataset.id, Sample.subject == subject)).all())
    if not rows:
        raise invalid(f"subject: no training sample of dataset {dataset.id} belongs to "
                      f"{subject!r}")
    return rows


def forget_set(db: Session, model: Model, body: DeletionRequestIn,
               pending: list[Job]) -> dict[str, int]:
    dataset = db.get(Dataset, model.dataset_id)
    if body.classes is not None or body.sample_ids is None:
        unavailable = unavailable_rows(db, model, pending)
        wanted = (rows_of_classes(db, dataset, body.classes) if body.classes is not None
                  else rows_of_subject(db, dataset, body.subject))
        rows = {i: r for i, r in wanted.items() if r not in unavailable}
        if not rows:
            field = "classes" if body.classes is not None else "subject"
            raise invalid(f"{field}: every matching sample is already forgotten or scheduled "
                          "to be")
        return rows
    rows = rows_of_sample_ids(db, dataset, body.sample_ids)
    unavailable = unavailable_rows(db, model, pending, among=set(rows.values()))
    already = [i for i, r in rows.items() if r in unavailable]
    if already:
        raise invalid(f"sample_ids: already forgotten or scheduled to be: {_listed(already)}",
                      already_forgotten=already[:1000])
    if unavailable_count(db, model, pending) + len(rows) >= dataset.num_train:
        raise invalid("sample_ids: nothing would be left to retain")
    return rows


def schedule(db: Session, model: Model, rows: list[int], classes: list[int] | None,
             method: str, params: dict, fallback: list[dict], gate: dict,
             pending: list[Job] | None = None) -> tuple[Job, bool]:
    """Merge into the model's waiting job of the same kind (method, parameters, fallback chain
    and gate alike), or queue a new one; says whether the job is new. ``pending``: the
    model's pending jobs when the caller has read them already.

    The caller holds the model's row lock, so a worker cannot claim the job mid-merge.
    """
    for job in pending_jobs(db, model) if pending is None else pending:
        if job.status != QUEUED or job.method != method or job.cancel_requested:
            continue
        same_terms = job.params == params and job.fallback == fallback and job.gate == gate
        if same_terms and (job.forget_classes is None) == (classes is None):
            job.forget_rows = sorted(set(job.forget_rows) | set(rows))
            if classes is not None:
                job.forget_classes = sorted(set(job.forget_classes) | set(classes))
            return job, False
    now = utcnow()
    job = Job(id=new_id("job"), tenant_id=model.tenant_id, model_id=model.id, method=method,
              params=params, fallback=fallback, gate=gate, forget_rows=sorted(rows),
              forget_classes=classes, status=QUEUED,
              not_before=now + timedelta(seconds=get_settings().coalesce_window_seconds))
    db.add(job)
    db.flush()
    audit.record(db, "job.queued", "job", job.id, tenant_id=job.tenant_id,
                 data={"model_id": model.id, "method": method})
    return job, True


def create_request(db: Session, principal: Principal, model: Model,
                   body: DeletionRequestIn) -> tuple[DeletionRequest, Job, bool]:
    """The request, its job, and whether that job is new (else the request joined it)."""
    body = with_method(body)
    params = resolve_params(body.method, body.params).model_dump(mode="json")
    fallback, gate = resolve_fallback(body), resolve_gate(body.gate)
    # Serialise requests on one model so two can never schedule the same sample.
    if not lock_row(db, Model, model.id):
        raise not_found("model", model.id)  # deleted since it was looked up
    pending = pending_jobs(db, model)
    rows = forget_set(db, model, body, pending)
    job, new_job = schedule(db, model, list(rows.values()), body.classes, body.method, params,
                            fallback, gate, pending)
    received = utcnow()
    request = DeletionRequest(
        id=new_id("dr"), tenant_id=principal.tenant_id, model_id=model.id,
        sample_ids=sorted(rows), classes=body.classes, subject=body.subject, reason=body.reason,
        method=body.method, params=params, fallback=fallback, gate=gate, status=SCHEDULED,
        job_id=job.id,
        received_at=received,
        deadline=received + timedelta(days=get_settings().deletion_deadline_days))
    db.add(request)
    db.flush()
    audit.record(db, "deletion_request.received", "deletion_request", request.id,
                 tenant_id=principal.tenant_id, actor=principal.key_id,
                 data={"model_id": model.id, "num_samples": len(rows), "classes": body.classes,
                       "subject": body.subject, "method": body.method, "job_id": job.id,
                       "fallback": [step["method"] for step in fallback], "gate": gate})
    return request, job, new_job


def settle_requests_of(db: Session, job: Job) -> list[str]:
    """Give the requests a finished job served its outcome; returns jobs scheduled anew."""
    rescheduled: list[str] = []
    for request in db.scalars(select(DeletionRequest).where(DeletionRequest.job_id == job.id)):
        if job.status == SUCCEEDED:
            request.status, request.completed_at = COMPLETED, job.finished_at
        elif job.status == CANCELLED:
            request.status = REJECTED
            request.error = {"type": "https://lethe.dev/problems/job-cancelled",
                             "title": "Job cancelled", "status": 409,
                             "detail": f"job {job.id} was cancelled"}
        elif job.status == FAILED:
            retry = _retry_or_fail(db, job, request)
            if retry:
                rescheduled.append(retry)
        else:
            continue
        audit.record(db, f"deletion_request.{request.status}", "deletion_request", request.id,
                     tenant_id=request.tenant_id, data={"job_id": job.id})
    return rescheduled


def _retry_or_fail(db: Session, job: Job, request: DeletionRequest) -> str | None:
    request.attempts += 1
    request.error = job.error
    if request.attempts >= get_settings().request_max_attempts:
        request.status = FAILED_REQUEST
        return None
    model = db.get(Model, request.model_id)
    dataset = db.get(Dataset, model.dataset_id)
    rows = rows_of_sample_ids(db, dataset, request.sample_ids)
    retry, _ = schedule(db, model, list(rows.values()), request.classes, request.method,
                        request.params, request.fallback, request.gate)
    request.job_id, request.status = retry.id, SCHEDULED
    return retry.id


def get_request(db: Session, principal: Principal, request_id: str) -> DeletionRequest:
    request = db.get(DeletionRequest, request_id)
    if request is None or request.tenant_id != principal.tenant_id:
        raise not_found("deletion request", request_id)
    return request


def request_cursor(request: DeletionRequest) -> str:
    return f"{request.deadline.isoformat()}|{request.id}"


def list_requests(db: Session, principal: Principal, page: PageParams, *,
                  model_id: str | None = None, status: str | None = None,
                  subject: str | None = None, overdue: bool = False) -> list[DeletionRequest]:
    """The tenant's requests, most urgent deadline first."""
    query = select(DeletionRequest).where(DeletionRequest.tenant_id == principal.tenant_id)
    if model_id:
        query = query.where(DeletionRequest.model_id == model_id)
    if status:
        query = query.where(DeletionRequest.status == status)
    if subject:
        query = query.where(DeletionRequest.subject == subject)
    if overdue:
        query = query.where(DeletionRequest.status.in_(OPEN_STATES),
                            DeletionRequest.deadline < utcnow())
    if page.after:
        deadline, _, after_id = page.after.partition("|")
        try:
            after_deadline = datetime.fromisoformat(deadline)
        except ValueError:
            raise invalid("cursor: not a cursor this service issued") from None
        query = query.where(or_(DeletionRequest.deadline > after_deadline, and_(
            DeletionRequest.deadline == after_deadline, DeletionRequest.id > after_id)))
    query = query.order_by(DeletionRequest.deadline, DeletionRequest.id)
    return list(db.scalars(query.limit(page.limit + 1)))


def announce_overdue(db: Session, limit: int = 1000) -> int:
    """Record (once) that an open request's deadline passed: an audit event, which webhooks
    subscribed to ``deletion_request.overdue`` announce. Returns how many."""
    now = utcnow()
    due = db.scalars(select(DeletionRequest).where(
        DeletionRequest.status.in_(OPEN_STATES), DeletionRequest.deadline < now,
        DeletionRequest.overdue_notified_at.is_(None)).limit(limit)).all()
    announced = 0
    for request in due:
        # Guarded, so that of two sweepers at once only one announces it.
        if not db.execute(update(DeletionRequest).where(
                DeletionRequest.id == request.id,
                DeletionRequest.overdue_notified_at.is_(None)).values(overdue_notified_at=now)
                .execution_options(synchronize_session=False)).rowcount:
            continue
        audit.record(db, "deletion_request.overdue", "deletion_request", request.id,
                     tenant_id=request.tenant_id,
                     data={"model_id": request.model_id, "status": request.status,
                           "deadline": request.deadline.isoformat(), "job_id": request.job_id})
        announced += 1
    db.commit()
    return announced
