from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel


class ModelOut(BaseModel):
    id: str
    name: str
    architecture: str
    architecture_config: dict[str, Any]
    dataset_id: str
    training_config: dict[str, Any]
    latest_version: int
    created_at: datetime

    @classmethod
    def of(cls, model) -> ModelOut:
        return cls.model_validate(model, from_attributes=True)


class VersionOut(BaseModel):
    version: int
    parent_version: int | None
    sha256: str
    size_bytes: int
    job_id: str | None
    created_at: datetime
    metrics: dict[str, Any] | None
    forgotten_samples: list[str]
    withdrawn_at: datetime | None

    @classmethod
    def of(cls, version) -> VersionOut:
        return cls(version=version.version, parent_version=version.parent_version,
                   sha256=version.sha256, size_bytes=version.size_bytes, job_id=version.job_id,
                   created_at=version.created_at, metrics=version.metrics,
                   forgotten_samples=version.forgotten_sample_ids,
                   withdrawn_at=version.withdrawn_at)
