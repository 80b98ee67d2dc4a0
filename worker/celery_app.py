"""The Celery application, configured for long GPU jobs."""

from __future__ import annotations

import logging
import threading
import time
from functools import lru_cache

from celery import Celery
from celery.signals import worker_process_init, worker_ready

from app.core.config import Settings, get_settings


def make_celery(settings: Settings) -> Celery:
    app = Celery("lethe", broker=settings.broker_url or "memory://", include=["worker.tasks"])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,  # job state lives in SQL, not in a result backend
        # Ack only after the task returns, and re-queue when the child process dies, so a
        # crash never loses a job; the guarded SQL transition stops it running twice.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=1,  # a fresh process per job releases all CUDA memory
        task_default_queue=settings.queue_name,
        task_routes={"lethe.run_job": {"queue": settings.queue_name}},
        task_time_limit=settings.job_time_limit_seconds,
        task_soft_time_limit=max(1, settings.job_time_limit_seconds - 60),
        # Redis re-delivers an unacked message after this; it must outlast the longest job.
        broker_transport_options={"visibility_timeout": settings.job_time_limit_seconds + 3600},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


@lru_cache
def get_celery() -> Celery:
    """The app for the current settings (tests switch brokers between cases)."""
    return make_celery(get_settings())


celery_app = get_celery()


@worker_process_init.connect
def _fresh_connections(**_kwargs) -> None:
    # Connections inherited from the parent through fork must not be shared with it.
    from app.core.db import get_engine

    if get_engine.cache_info().currsize:
        get_engine().dispose(close=False)


@worker_ready.connect
def _start_sweeper(**_kwargs) -> None:
    """In the worker's main process: re-send jobs whose message was lost (see sweep_stalled)."""
    from worker.dispatch import sweep_stalled
    from worker.maintenance import periodic_upkeep

    interval = get_settings().sweep_interval_seconds

    def loop() -> None:
        while True:
            try:
                sweep_stalled()
                periodic_upkeep()
            except Exception:  # noqa: BLE001 - try again next round
                logging.getLogger(__name__).exception("sweep failed")
            time.sleep(interval)

    threading.Thread(target=loop, daemon=True, name="lethe-sweeper").start()
