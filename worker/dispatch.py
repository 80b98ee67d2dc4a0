"""Handing jobs to workers: Celery over the broker, or a worker thread inside the API process."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import or_, select

from app.core.config import get_settings
from app.core.db import new_session, session_scope
from app.jobs.tables import QUEUED, RUNNING, Job
from worker import claims

log = logging.getLogger(__name__)

_embedded: EmbeddedWorker | None = None


def send_job(job_id: str, delay_seconds: float = 0.0) -> None:
    if _embedded is not None:
        _embedded.wake()
        return
    if get_settings().embedded_worker:
        return  # no worker in this process (e.g. a CLI); the next embedded start picks it up
    from worker.celery_app import get_celery

    get_celery().send_task("lethe.run_job", args=[job_id], queue=get_settings().queue_name,
                           countdown=max(0.0, delay_seconds) or None)


def send_webhook(delivery_id: str, delay_seconds: float = 0.0) -> None:
    """Hand a committed webhook delivery to a worker (its retries follow by themselves)."""
    if _embedded is not None:
        _embedded.wake()
        return
    if get_settings().embedded_worker:
        return  # no worker in this process; the next embedded start delivers it
    from worker.celery_app import get_celery

    get_celery().send_task("lethe.deliver_webhook", args=[delivery_id],
                           queue=get_settings().resolved_webhook_queue,
                           countdown=max(0.0, delay_seconds) or None)


def sweep_webhooks() -> int:
    """Re-send deliveries overdue by a minute or more (a lost message, a dead worker)."""
    from app.webhooks.service import due_deliveries

    delivery_ids = due_deliveries(stale_after=60.0)
    for delivery_id in delivery_ids:
        send_webhook(delivery_id)
    return len(delivery_ids)


def broker_ready() -> bool:
    if get_settings().embedded_worker:
        return _embedded is not None and _embedded.alive()
    from worker.celery_app import get_celery

    try:
        with get_celery().connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
        return True
    except Exception:  # noqa: BLE001 - any failure means not ready
        return False


def sweep_stalled() -> int:
    """Re-send jobs whose message may be lost; duplicates are harmless (guarded claims)."""
    with session_scope() as db:
        job_ids = claims.stalled_jobs(db)
        for job in db.scalars(select(Job).where(Job.id.in_(job_ids))):
            job.dispatched_at = claims.utcnow()
    for job_id in job_ids:
        send_job(job_id)
    return len(job_ids)


class EmbeddedWorker:
    """Runs jobs in threads of this process, polling the job table (the embedded default)."""

    def __init__(self, concurrency: int, poll_seconds: float = 1.0):
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="lethe-job")
        # Webhook deliveries, apart from jobs: a slow receiver never holds a job back. A
        # delivery due later is found by a later poll (Celery's retry, in-process).
        self._webhooks = ThreadPoolExecutor(max_workers=2, thread_name_prefix="lethe-webhook")
        self._delivering: set[str] = set()
        self._concurrency = concurrency
        self._poll = poll_seconds
        self._running: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="lethe-dispatch")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop polling; running jobs are handed back to the queue at their next step."""
        from worker.execution import stopping

        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)
        stopping.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._webhooks.shutdown(wait=True, cancel_futures=True)
        stopping.clear()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        from worker.maintenance import periodic_upkeep

        next_upkeep = 0.0
        while not self._stop.is_set():
            try:
                self._submit_ready()
                self._submit_webhooks()
                if time.monotonic() >= next_upkeep:
                    periodic_upkeep()
                    next_upkeep = time.monotonic() + get_settings().sweep_interval_seconds
            except Exception:  # noqa: BLE001 - keep dispatching whatever one poll hit
                log.exception("embedded dispatch failed; retrying")
            self._wake.wait(self._poll)
            self._wake.clear()

    def _candidates(self) -> list[str]:
        with new_session() as db:
            ready = or_(Job.not_before.is_(None), Job.not_before <= claims.utcnow())
            return list(db.scalars(select(Job.id).where(or_(
                (Job.status == QUEUED) & ready,
                (Job.status == RUNNING) & (Job.heartbeat_at < claims.lease_cutoff()),
            )).order_by(Job.created_at).limit(100)))

    def _submit_ready(self) -> None:
        for job_id in self._candidates():
            with self._lock:
                if len(self._running) >= self._concurrency or job_id in self._running:
                    continue
                self._running.add(job_id)
            self._pool.submit(self._run, job_id)

    def _submit_webhooks(self) -> None:
        from app.webhooks.service import due_deliveries

        for delivery_id in due_deliveries():
            with self._lock:
                if delivery_id in self._delivering:
                    continue
                self._delivering.add(delivery_id)
            self._webhooks.submit(self._deliver, delivery_id)

    def _deliver(self, delivery_id: str) -> None:
        from app.webhooks.service import deliver

        try:
            deliver(delivery_id)  # a retry is due later: a later poll finds it
        except Exception:  # noqa: BLE001 - logged; the row says what is left to do
            log.exception("webhook delivery %s crashed", delivery_id)
        finally:
            with self._lock:
                self._delivering.discard(delivery_id)

    def _run(self, job_id: str) -> None:
        from worker.execution import execute_job

        try:
            execute_job(job_id, worker="embedded")  # follow-ups are found by the next poll
        except Exception:  # noqa: BLE001 - logged; the row stays the source of truth
            log.exception("embedded run of job %s crashed", job_id)
        finally:
            with self._lock:
                self._running.discard(job_id)
            self._wake.set()


def start_embedded_worker() -> EmbeddedWorker:
    global _embedded
    if _embedded is None:
        from worker.execution import freeze_what_came_before_jobs

        freeze_what_came_before_jobs()
        _embedded = EmbeddedWorker(get_settings().local_workers)
        _embedded.start()
    return _embedded


def stop_embedded_worker() -> None:
    global _embedded
    if _embedded is not None:
        _embedded.stop()
        _embedded = None
