"""Celery tasks: thin wrappers around the job runner."""

from __future__ import annotations

from app.core.config import get_settings
from worker.celery_app import celery_app
from worker.claims import Verdict
from worker.execution import execute_job


@celery_app.task(bind=True, name="lethe.run_job", max_retries=None)
def run_job(self, job_id: str) -> str:
    verdict = execute_job(job_id, worker=self.request.hostname or "celery")
    if verdict is Verdict.BUSY:
        # The model is busy with an earlier job (or a transient error hit): ask again later.
        raise self.retry(countdown=get_settings().busy_retry_seconds)
    return verdict.value
