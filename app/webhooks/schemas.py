from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2000, description="Where to POST the events (http or https).")
    events: list[str] = Field(min_length=1, max_length=50, description="Event types (see "
                              "docs/api.md), or [\"*\"] for all of them.")
    description: str | None = Field(None, max_length=500)


class WebhookOut(BaseModel):
    id: str
    url: str
    events: list[str]
    description: str | None
    created_at: datetime

    @classmethod
    def of(cls, endpoint) -> WebhookOut:
        return cls(id=endpoint.id, url=endpoint.url, events=endpoint.events,
                   description=endpoint.description, created_at=endpoint.created_at)


class WebhookCreated(WebhookOut):
    secret: str = Field(description="The signing secret (whsec_…), shown only here: verify "
                                    "each delivery's webhook-signature with it.")

    @classmethod
    def of(cls, endpoint) -> WebhookCreated:
        return cls(**WebhookOut.of(endpoint).model_dump(), secret=endpoint.secret)


class AttemptOut(BaseModel):
    number: int
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int


class DeliveryOut(BaseModel):
    id: str = Field(description="The webhook-id header of every attempt.")
    webhook_id: str
    event_type: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int = Field(description="Attempts in the current round (a resend starts one).")
    next_attempt_at: datetime | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    payload: dict[str, Any]
    attempt_log: list[AttemptOut]

    @classmethod
    def of(cls, delivery, attempts) -> DeliveryOut:
        return cls(id=delivery.id, webhook_id=delivery.endpoint_id,
                   event_type=delivery.event_type, status=delivery.status,
                   attempts=delivery.attempts, next_attempt_at=delivery.next_attempt_at,
                   last_error=delivery.last_error, created_at=delivery.created_at,
                   delivered_at=delivery.delivered_at, payload=delivery.payload,
                   attempt_log=[AttemptOut(number=a.number, at=a.at, status_code=a.status_code,
                                           error=a.error, duration_ms=a.duration_ms)
                                for a in attempts])
