"""Celery tasks and the worker's signal handlers: thin wrappers around the job runner."""

from __future__ import annotations

import logging
import threading
import time

from celery.signals import worker_process_init, worker_ready

from app.core.config import get_settings
from app.core.storage import get_blob_store
from worker.celery_app import celery_app
from worker.claims import Verdict
from worker.dispatch import send_job, sweep_stalled, sweep_webhooks
from worker.execution import execute_job, freeze_what_came_before_jobs
from worker.maintenance import periodic_upkeep

log = logging.getLogger(__name__)


@celery_app.task(bind=True, name="lethe.run_job", max_retries=None)
def run_job(self, job_id: str) -> str:
    execution = execute_job(job_id, worker=self.request.hostname or "celery")
    for follow_up in execution.follow_ups:
        send_job(follow_up)
    if execution.verdict is Verdict.BUSY:
        # The model is busy with an earlier job (or a transient error hit): ask again later.
        raise self.retry(countdown=get_settings().busy_retry_seconds)
    return execution.verdict.value


@celery_app.task(bind=True, name="lethe.deliver_webhook", max_retries=None)
def deliver_webhook(self, delivery_id: str) -> str:
    """One attempt; a failed one is retried by Celery after the delivery's backoff (the row
    counts the attempts and decides when to give up)."""
    from app.webhooks.service import deliver

    wait = deliver(delivery_id)
    if wait is not None:
        raise self.retry(countdown=max(wait, 0.0))
    return "done"


@worker_process_init.connect
def _fresh_connections(**_kwargs) -> None:
    # Connections inherited from the parent through fork must not be shared with it.
    from app.core.db import get_engine

    if get_engine.cache_info().currsize:
        get_engine().dispose(close=False)


@worker_process_init.connect
def _freeze_what_came_before_jobs(**_kwargs) -> None:
    # After the connections' reset above (receivers run in the order they connected).
    freeze_what_came_before_jobs()


@worker_ready.connect
def _start_sweeper(**_kwargs) -> None:
    """In the worker's main process: clear what dead processes left in staging, then re-send
    jobs whose message was lost (see sweep_stalled)."""
    get_blob_store().sweep_staging(older_than=time.time())
    interval = get_settings().sweep_interval_seconds

    def loop() -> None:
        while True:
            try:
                sweep_stalled()
                sweep_webhooks()
                periodic_upkeep()
            except Exception:  # noqa: BLE001 - try again next round
                log.exception("sweep failed")
            time.sleep(interval)

    threading.Thread(target=loop, daemon=True, name="lethe-sweeper").start()
