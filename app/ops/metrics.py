"""Prometheus metrics: request counts and latency, and job counts read from the database."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

REGISTRY = CollectorRegistry()

REQUESTS = Counter("lethe_http_requests_total", "HTTP requests served.",
                   ["method", "route", "status"], registry=REGISTRY)
LATENCY = Histogram("lethe_http_request_seconds", "HTTP request latency.", ["method", "route"],
                    registry=REGISTRY)


class JobCollector:
    """Job counts by status, read at scrape time so every API replica reports the truth."""

    def collect(self):
        from app.core.db import new_session
        from app.jobs.tables import Job

        gauge = GaugeMetricFamily("lethe_jobs", "Unlearning jobs by status.", labels=["status"])
        try:
            with new_session() as db:
                counts = db.execute(select(Job.status, func.count()).group_by(Job.status)).all()
        except Exception:  # noqa: BLE001 - a scrape must not fail because the DB is down
            counts = []
        for status, count in counts:
            gauge.add_metric([status], count)
        yield gauge


REGISTRY.register(JobCollector())
