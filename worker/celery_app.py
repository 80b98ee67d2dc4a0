"""The Celery application, configured for long GPU jobs. Configuration only: the tasks and the
worker's signal handlers live in ``worker.tasks``."""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

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
        # A child serves many messages: most find their job busy or done and must cost
        # milliseconds, not a process start. Each job frees its memory when it ends (see
        # execution.release_memory); a child that still grows past this is replaced.
        worker_max_memory_per_child=settings.worker_max_memory_mb * 1024,
        task_default_queue=settings.queue_name,
        task_routes={"lethe.run_job": {"queue": settings.queue_name},
                     "lethe.deliver_webhook": {"queue": settings.resolved_webhook_queue}},
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
