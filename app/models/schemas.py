from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from app.core.guards import INT32_MAX


class ModelOut(BaseModel):
    id: str
    name: str
    architecture: str
    architecture_config: dict[str, Any]
    dataset_id: str
    training_config: dict[str, Any]
    latest_version: int
    created_at: datetime
    tags: dict[str, str] = Field(default_factory=dict, description="The model's tags.")
    aliases: dict[str, int] = Field(default_factory=dict,
                                    description="Alias -> the version it names.")

    @classmethod
    def of(cls, model, tags: dict[str, str] | None = None,
           aliases: dict[str, int] | None = None) -> ModelOut:
        return cls(id=model.id, name=model.name, architecture=model.architecture,
                   architecture_config=model.architecture_config, dataset_id=model.dataset_id,
                   training_config=model.training_config, latest_version=model.latest_version,
                   created_at=model.created_at, tags=tags or {}, aliases=aliases or {})


class VersionOut(BaseModel):
    version: int
    parent_version: int | None
    sha256: str
    size_bytes: int
    job_id: str | None
    created_at: datetime
    metrics: dict[str, Any] | None
    forgotten_samples: int = Field(description="How many samples the job that made this "
                                   "version forgot; GET …/forgotten-samples lists them.")
    withdrawn_at: datetime | None
    tags: dict[str, str] = Field(default_factory=dict, description="The version's tags.")
    aliases: list[str] = Field(default_factory=list,
                               description="The aliases naming it (`latest` included).")

    @classmethod
    def of(cls, version, tags: dict[str, str] | None = None,
           aliases: list[str] | None = None) -> VersionOut:
        return cls(version=version.version, parent_version=version.parent_version,
                   sha256=version.sha256, size_bytes=version.size_bytes, job_id=version.job_id,
                   created_at=version.created_at, metrics=version.metrics,
                   forgotten_samples=len(version.forgotten_sample_ids),
                   withdrawn_at=version.withdrawn_at, tags=tags or {}, aliases=aliases or [])


class AliasIn(BaseModel):
    version: int = Field(ge=1, le=INT32_MAX, description="The version the alias names.")


class AliasOut(BaseModel):
    model_id: str
    alias: str
    version: int
    updated_at: datetime

    @classmethod
    def of(cls, model_id: str, alias: str, version: int, updated_at: datetime) -> AliasOut:
        return cls(model_id=model_id, alias=alias, version=version, updated_at=updated_at)


class TagIn(BaseModel):
    value: str = Field(max_length=1000)


class ForgottenSampleOut(BaseModel):
    id: str
