from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel


class JobOut(BaseModel):
    id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: float
    phase: str | None
    model_id: str
    method: str
    params: dict[str, Any]
    fallback: list[dict[str, Any]] | None
    gate: dict[str, Any] | None
    num_forget_samples: int
    forget_classes: list[int] | None
    base_version: int | None
    result_version: int | None
    metrics: dict[str, Any] | None
    error: dict[str, Any] | None
    attempts: int
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job) -> JobOut:
        return cls(
            id=job.id, status=job.status, progress=job.progress, phase=job.phase,
            model_id=job.model_id, method=job.method, params=job.params,
            fallback=job.fallback, gate=job.gate,
            num_forget_samples=len(job.forget_rows), forget_classes=job.forget_classes,
            base_version=job.base_version, result_version=job.result_version,
            metrics=job.metrics, error=job.error, attempts=job.attempts,
            cancel_requested=job.cancel_requested, created_at=job.created_at,
            started_at=job.started_at, finished_at=job.finished_at,
        )
