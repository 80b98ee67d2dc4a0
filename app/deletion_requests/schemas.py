from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.core.db import utcnow
from app.core.guards import Int32
from app.jobs.schemas import JobOut

SHOWN_DUPLICATES = 20


class FallbackStep(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: str = Field(..., max_length=100, description="A name from GET /v1/methods.")
    params: dict[str, Any] = Field(default_factory=dict,
                                   description="The method's parameters (its params_schema).")

    @model_validator(mode="before")
    @classmethod
    def _name_alone(cls, value: Any) -> Any:
        return {"method": value} if isinstance(value, str) else value


class DeletionRequestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sample_ids: list[str] | None = Field(None, min_length=1, max_length=1_000_000,
                                         description="Training samples to forget.")
    classes: list[Int32] | None = Field(None, min_length=1,
                                        description="Whole classes to forget, by label.")
    method: str | None = Field(
        None, max_length=100,
        description="A name from GET /v1/methods. Default: the service's chain for the kind "
                    "of request, its first method with the rest as the fallback (samples: "
                    "projected-gradient, feature-constraint, retrain; whole classes: "
                    "projected-gradient, deepclean, retrain; GET /v1/acceptance-gate lists "
                    "the service's). params need a method named.")
    params: dict[str, Any] = Field(default_factory=dict,
                                   description="The method's parameters (its params_schema).")
    fallback: list[FallbackStep] | None = Field(
        None, max_length=10,
        description="Methods tried in turn, each a name or {method, params}, when a candidate "
                    "fails the acceptance gate. Default: the service's chain, ending in "
                    "retrain; [] for none (a failing candidate then fails the job).")
    gate: dict[str, Any] | None = Field(
        None, description="Overrides of the acceptance gate's thresholds, field by field "
                          "(enforce, max_utility_drop, class_forget_max, forget_margin_above, "
                          "forget_margin_below, mia_margin, z, sample_rows); see the README.")
    subject: str | None = Field(None, max_length=200, description="Who asked. Alone, without "
                                "sample_ids or classes, it forgets all of that subject's samples.")
    reason: str | None = Field(None, max_length=2000)

    @field_validator("sample_ids", "classes")
    @classmethod
    def _no_duplicates(cls, values: list | None) -> list | None:
        """A request says exactly what to forget: a repeated id is a mistake to report, not
        something to merge silently (the receipt counts and hashes what was forgotten)."""
        repeated = [value for value, count in Counter(values or ()).items() if count > 1]
        if repeated:
            shown = ", ".join(repr(value) for value in repeated[:SHOWN_DUPLICATES])
            more = (f" and {len(repeated) - SHOWN_DUPLICATES} more"
                    if len(repeated) > SHOWN_DUPLICATES else "")
            raise ValueError(f"listed more than once: {shown}{more}")
        return values

    @model_validator(mode="after")
    def _params_name_their_method(self) -> DeletionRequestIn:
        if self.params and self.method is None:
            raise ValueError("params: name the method they are for (the default method "
                             "depends on the kind of request and the service's chain)")
        return self

    @model_validator(mode="after")
    def _one_selector(self) -> DeletionRequestIn:
        if self.sample_ids is not None and self.classes is not None:
            raise ValueError("give exactly one of sample_ids or classes")
        if self.sample_ids is None and self.classes is None and not self.subject:
            raise ValueError("give sample_ids, classes, or a subject whose samples to forget")
        return self


class DeletionRequestOut(BaseModel):
    id: str
    model_id: str
    status: str
    job_id: str | None
    method: str
    params: dict[str, Any]
    fallback: list[dict[str, Any]] | None
    gate: dict[str, Any] | None
    num_samples: int
    classes: list[int] | None
    subject: str | None
    reason: str | None
    attempts: int
    error: dict[str, Any] | None
    received_at: datetime
    deadline: datetime
    overdue: bool
    completed_at: datetime | None
    version_before: int | None
    version_after: int | None
    job: JobOut | None = None

    @classmethod
    def of(cls, request, job=None) -> DeletionRequestOut:
        open_ = request.status in ("received", "scheduled")
        return cls(id=request.id, model_id=request.model_id, status=request.status,
                   job_id=request.job_id, method=request.method, params=request.params,
                   fallback=request.fallback, gate=request.gate,
                   num_samples=len(request.sample_ids), classes=request.classes,
                   subject=request.subject, reason=request.reason, attempts=request.attempts,
                   error=request.error, received_at=request.received_at,
                   deadline=request.deadline, overdue=open_ and request.deadline < utcnow(),
                   completed_at=request.completed_at,
                   version_before=job.base_version if job else None,
                   version_after=job.result_version if job else None,
                   job=JobOut.of(job) if job else None)


class SignedDocument(BaseModel):
    """A payload signed with the service's Ed25519 key: a receipt, or a signed audit head. The
    signature covers ``receipt``'s canonical JSON (sorted keys, no whitespace, UTF-8)."""

    receipt: dict[str, Any]
    algorithm: str = Field(description="Ed25519.")
    key_id: str = Field(description="The first 16 hex digits of the public key's sha256.")
    signature: str = Field(description="Base64 of the signature.")


class PublicKeyOut(BaseModel):
    algorithm: str
    key_id: str
    public_key_pem: str
    public_key: str = Field(description="Base64 of the raw 32-byte public key.")
