"""The console's pages, under /ui: each reads through its domain's service layer, as the
tenant of the signed-in key, exactly what that key would see through /v1."""

from __future__ import annotations

import json
import re
from dataclasses import asdict

from fastapi import APIRouter, Depends, FastAPI, Form, Request, Response
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.audit import verification
from app.audit.tables import AuditEvent
from app.console import benchmarks, lineage, plot
from app.console.pages import HERE, HOME, ConsoleRoute, page, safe_next
from app.console.session import (
    ConsoleSession,
    SignInRequired,
    check_form,
    check_sign_in_form,
    end_session,
    read_session,
    sign_in_form_token,
    start_session,
)
from app.core.db import get_db, utcnow
from app.core.errors import invalid, not_found
from app.core.guards import INT32_MAX
from app.core.pagination import PageParams, deadline_key, encode_cursor, paging
from app.deletion_requests import receipts
from app.deletion_requests import service as requests_service
from app.deletion_requests.tables import DeletionRequest
from app.jobs import service as jobs_service
from app.jobs.tables import FINAL_STATES, Job
from app.models import labels
from app.models.service import get_model, list_models

router = APIRouter(prefix="/ui", include_in_schema=False, route_class=ConsoleRoute)
PAGE_SIZE = 100
REQUEST_STATES = ("received", "scheduled", "completed", "rejected", "failed")
ALL = PageParams(limit=1000, after=None)
HASH = re.compile(r"[0-9a-f]{64}")


def signed_in(request: Request, db: Session = Depends(get_db)) -> ConsoleSession:
    session = read_session(db, request)
    if session is None:
        raise SignInRequired()
    return session


def install_console(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="console-static")


# --- signing in and out ------------------------------------------------------------------

@router.get("")
def console_home():
    return RedirectResponse(HOME, status_code=303)


@router.get("/sign-in")
def sign_in_page(request: Request, next: str | None = None, db: Session = Depends(get_db)):
    if read_session(db, request) is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return _sign_in_form(request, safe_next(next))


def _sign_in_form(request: Request, target: str, error: str | None = None,
                  status: int = 200) -> Response:
    response = Response()  # collects the form's cookie before the page is rendered
    token = sign_in_form_token(request, response)
    body = page(request, "sign_in.html", None, status, next=target, error=error,
                csrf_token=token)
    body.raw_headers += [h for h in response.raw_headers if h[0] == b"set-cookie"]
    return body


@router.post("/sign-in")
def sign_in(request: Request, token: str = Form(""), csrf_token: str = Form(""),
            next: str = Form(""), db: Session = Depends(get_db)):
    check_sign_in_form(request, csrf_token)
    response = RedirectResponse(safe_next(next), status_code=303)
    if not token.strip() or not start_session(db, token, request, response):
        return _sign_in_form(request, safe_next(next), "That API key is not valid, or it was "
                             "revoked. Keys look like lethe_…", status=401)
    return response


@router.post("/sign-out")
def sign_out(request: Request, csrf_token: str = Form(""),
             session: ConsoleSession = Depends(signed_in)):
    check_form(request, session, csrf_token)
    response = RedirectResponse("/ui/sign-in", status_code=303)
    end_session(response)
    return response


# --- deletion requests and receipts ------------------------------------------------------

@router.get("/requests")
def requests_page(request: Request, model_id: str | None = None, subject: str | None = None,
                  status: str | None = None, cursor: str | None = None,
                  db: Session = Depends(get_db), session: ConsoleSession = Depends(signed_in)):
    if status and status not in REQUEST_STATES:
        raise invalid(f"status: {status!r} is not one of {', '.join(REQUEST_STATES)}")
    filters = {"model_id": model_id or None, "subject": subject or None,
               "status": status or None}
    params = paging(deadline_key)(limit=PAGE_SIZE, cursor=cursor or None)
    overdue = requests_service.list_requests(db, session.principal, ALL, overdue=True,
                                             **filters)[: ALL.limit]
    rows = requests_service.list_requests(db, session.principal, params, **filters)
    more = len(rows) > params.limit
    rows = rows[: params.limit]
    overdue_ids = {r.id for r in overdue}
    models = list_models(db, session.principal, ALL)[: ALL.limit]
    return page(request, "requests.html", session, filters=filters, overdue=overdue,
                rows=[r for r in rows if r.id not in overdue_ids],
                next_cursor=encode_cursor(requests_service.request_cursor(rows[-1]))
                if more and rows else None,
                models=models, model_names={m.id: m.name for m in models},
                states=REQUEST_STATES)


@router.get("/requests/{request_id}/receipt.json")
def download_receipt(request_id: str, db: Session = Depends(get_db),
                     session: ConsoleSession = Depends(signed_in)):
    deletion = requests_service.get_request(db, session.principal, request_id)
    document = receipts.signed_receipt(db, deletion)
    # Issuing a receipt is on the record, whichever door it left by (as GET …/receipt does).
    audit.record(db, "receipt.issued", "deletion_request", deletion.id,
                 tenant_id=session.principal.tenant_id, actor=session.principal.key_id,
                 data={"key_id": document["key_id"], "via": "console"})
    db.commit()
    return _download(document, f"receipt-{deletion.id}.json")


@router.get("/receipts/key.json")
def download_public_key(_: ConsoleSession = Depends(signed_in)):
    return _download(receipts.public_key_document(), "lethe-receipt-key.json")


def _download(document: dict, filename: str) -> Response:
    return Response(json.dumps(document, indent=2, ensure_ascii=False) + "\n",
                    media_type="application/json",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@router.get("/receipts")
def receipts_page(request: Request, db: Session = Depends(get_db),
                  session: ConsoleSession = Depends(signed_in)):
    completed = requests_service.list_requests(db, session.principal, ALL,
                                               status="completed")[: ALL.limit]
    key = receipts.public_key_document()
    return page(request, "receipts.html", session, completed=completed, key=key)


# --- models and jobs ---------------------------------------------------------------------

@router.get("/models")
def models_page(request: Request, db: Session = Depends(get_db),
                session: ConsoleSession = Depends(signed_in)):
    models = list_models(db, session.principal, ALL)[: ALL.limit]
    _, aliases = labels.labels_of_models(db, [m.id for m in models])
    return page(request, "models.html", session, models=models, aliases=aliases)


@router.get("/models/{model_id}")
def model_page(request: Request, model_id: str, db: Session = Depends(get_db),
               session: ConsoleSession = Depends(signed_in)):
    model = get_model(db, session.principal, model_id)
    versions = lineage.lineage(db, model)
    _, aliases = labels.labels_of_models(db, [model.id])
    svg = plot.accuracy_plot([(v.version.version, v.accuracy) for v in versions])
    return page(request, "model.html", session, model=model, versions=versions,
                aliases=aliases[model.id], plot_svg=svg)


def _job_requests(db: Session, job: Job) -> list[DeletionRequest]:
    return list(db.scalars(select(DeletionRequest).where(DeletionRequest.job_id == job.id)
                           .order_by(DeletionRequest.received_at)))


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: str, db: Session = Depends(get_db),
             session: ConsoleSession = Depends(signed_in)):
    job = jobs_service.get_job(db, session.principal, job_id)
    model = get_model(db, session.principal, job.model_id)
    return page(request, "job.html", session, job=job, model=model,
                requests=_job_requests(db, job), final=job.status in FINAL_STATES,
                candidates=(job.metrics or {}).get("candidates", []))


@router.get("/jobs/{job_id}/progress.json")
def job_progress(job_id: str, db: Session = Depends(get_db),
                 session: ConsoleSession = Depends(signed_in)):
    """What the job page polls: small, and never cached."""
    job = jobs_service.get_job(db, session.principal, job_id)
    candidates = [{"method": c.get("method"), "verdict": c.get("verdict"),
                   "seconds": c.get("seconds"), "gate_seconds": c.get("gate_seconds"),
                   "error": c.get("error")}
                  for c in (job.metrics or {}).get("candidates", [])]
    return JSONResponse({"id": job.id, "status": job.status, "progress": job.progress,
                         "phase": job.phase, "attempts": job.attempts,
                         "cancel_requested": job.cancel_requested,
                         "final": job.status in FINAL_STATES, "candidates": candidates,
                         "error": job.error, "result_version": job.result_version})


@router.post("/jobs/{job_id}/cancel")
def cancel_job(request: Request, job_id: str, csrf_token: str = Form(""),
               db: Session = Depends(get_db), session: ConsoleSession = Depends(signed_in)):
    check_form(request, session, csrf_token)
    job = jobs_service.cancel_job(db, session.principal, job_id)
    return RedirectResponse(f"/ui/jobs/{job.id}", status_code=303)


# --- the audit trail ---------------------------------------------------------------------

def _events(db: Session, tenant_id: str, before: int | None) -> tuple[list[AuditEvent], bool]:
    """The tenant's events, newest first, and whether older ones remain."""
    query = select(AuditEvent).where(AuditEvent.tenant_id == tenant_id)
    if before is not None:
        query = query.where(AuditEvent.seq < before)
    rows = list(db.scalars(query.order_by(AuditEvent.seq.desc()).limit(PAGE_SIZE + 1)))
    return rows[:PAGE_SIZE], len(rows) > PAGE_SIZE


def _sequence_number(field: str, text: str | None) -> int | None:
    if not text:
        return None
    if not text.isdigit() or int(text) > INT32_MAX:
        raise invalid(f"{field}: must be an event's sequence number (a whole number)")
    return int(text)


def _audit_page(request: Request, db: Session, session: ConsoleSession, before: str | None,
                **context) -> Response:
    events, older = _events(db, session.principal.tenant_id,
                            _sequence_number("before", before))
    return page(request, "audit.html", session, events=events,
                older=events[-1].seq if older and events else None, **context)


@router.get("/audit")
def audit_page(request: Request, before: str | None = None, db: Session = Depends(get_db),
               session: ConsoleSession = Depends(signed_in)):
    return _audit_page(request, db, session, before)


@router.get("/audit/verify")
def audit_verify(request: Request, anchor_seq: str | None = None,
                 anchor_hash: str | None = None, full: str | None = None,
                 db: Session = Depends(get_db), session: ConsoleSession = Depends(signed_in)):
    """Verification changes nothing a tenant sees (at most it signs a checkpoint of the chain
    it found intact, as GET /v1/audit/verify does), so it is a GET: no token needed."""
    seq = _sequence_number("anchor_seq", anchor_seq)
    digest = (anchor_hash or "").strip().lower() or None
    if (seq is None) != (digest is None):
        raise invalid("anchor_seq and anchor_hash: give both or neither")
    if digest is not None and not HASH.fullmatch(digest):
        raise invalid("anchor_hash: must be 64 hexadecimal digits")
    check = verification.check_chain(db, session.principal.tenant_id,
                                     (seq, digest) if seq is not None else None,
                                     full=(full or "").strip().lower() in ("1", "on", "true"))
    return _audit_page(request, db, session, None, verdict=asdict(check),
                       anchor={"seq": seq, "hash": digest}, verified_at=utcnow())


# --- the benchmark -----------------------------------------------------------------------

@router.get("/benchmarks")
def benchmarks_page(request: Request, session: ConsoleSession = Depends(signed_in)):
    return page(request, "benchmarks.html", session, results=benchmarks.find_results(),
                searched=benchmarks.candidate_dirs())


@router.get("/benchmarks/tradeoff.png")
def benchmark_plot(_: ConsoleSession = Depends(signed_in)):
    results = benchmarks.find_results()
    if results is None or results.plot is None:
        raise not_found("benchmark plot", benchmarks.PLOT)
    return FileResponse(results.plot, media_type="image/png")

