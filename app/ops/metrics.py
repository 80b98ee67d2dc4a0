"""Prometheus metrics: request counts and latency, and job counts read from the database."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

REGISTRY = CollectorRegistry()

REQUESTS = Counter("lethe_http_requests_total", "HTTP requests served.",
                   ["method", "route", "status"], registry=REGISTRY)
LATENCY = Histogram("lethe_http_request_seconds", "HTTP request latency.", ["method", "route"],
                    registry=REGISTRY)


class RequestMetrics:
    """Pure ASGI middleware counting requests and timing them by route. Starlette's
    ``@app.middleware("http")`` would wrap every request in a task and a streamed body, a
    fifth of a job poll's CPU time."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def noting_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noting_status)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            REQUESTS.labels(scope["method"], path, status).inc()
            LATENCY.labels(scope["method"], path).observe(time.perf_counter() - started)


class DatabaseCollector:
    """Gauges read from the database at scrape time, so every API replica reports the truth."""

    def collect(self):
        from app.core.db import new_session

        try:
            with new_session() as db:
                yield from self._gauges(db)
        except Exception:  # noqa: BLE001 - a scrape must not fail because the DB is down
            return

    @staticmethod
    def _gauges(db):
        from app.core.db import utcnow
        from app.deletion_requests.service import OPEN_STATES
        from app.deletion_requests.tables import DeletionRequest
        from app.jobs.tables import Job

        jobs = GaugeMetricFamily("lethe_jobs", "Unlearning jobs by status.", labels=["status"])
        for status, count in db.execute(select(Job.status, func.count()).group_by(Job.status)):
            jobs.add_metric([status], count)
        yield jobs
        open_requests = DeletionRequest.status.in_(OPEN_STATES)
        now = utcnow()
        oldest = db.scalar(select(func.min(DeletionRequest.received_at)).where(open_requests))
        yield GaugeMetricFamily(
            "lethe_deletion_request_oldest_open_age_seconds",
            "Age of the oldest deletion request not yet completed (0 if none).",
            value=(now - oldest).total_seconds() if oldest else 0.0)
        overdue = db.scalar(select(func.count()).select_from(DeletionRequest).where(
            open_requests, DeletionRequest.deadline < now))
        yield GaugeMetricFamily("lethe_deletion_requests_overdue",
                                "Open deletion requests past their deadline.", value=overdue)


REGISTRY.register(DatabaseCollector())
