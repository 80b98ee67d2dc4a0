"""Liveness, readiness and Prometheus metrics (no auth: probes and scrapers call these)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from app.core.db import get_engine
from app.ops.metrics import REGISTRY
from worker.dispatch import broker_ready

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz():
    return {"status": "ok"}


@router.get("/readyz", responses={503: {
    "description": "A dependency (the database or the broker) is not reachable.",
    "content": {"application/json": {}}}})
def readyz():
    checks = {"database": _database_ready(), "broker": broker_ready()}
    ready = all(checks.values())
    return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks},
                        status_code=200 if ready else 503)


@router.get("/metrics", response_class=PlainTextResponse,
            responses={200: {"description": "Prometheus text exposition format."}})
def metrics():
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def _database_ready() -> bool:
    try:
        with get_engine().connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except Exception:  # noqa: BLE001 - any failure means not ready
        return False
