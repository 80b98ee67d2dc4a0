"""``Idempotency-Key`` on creating POSTs: same key and body replays, another body is 422."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from fastapi import Header
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.errors import Problem
from app.core.idempotency_table import IdempotencyRecord


def idempotency_key(
    key: str | None = Header(None, alias="Idempotency-Key", max_length=200,
                             description="Replays the first response for a repeated request."),
) -> str | None:
    return key


def fingerprint(payload: Any) -> str:
    canonical = json.dumps(jsonable_encoder(payload), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class Idempotency:
    def __init__(self, db: Session, tenant_id: str, key: str | None, request_fingerprint: str):
        self.db, self.tenant_id, self.key, self.fingerprint = (
            db, tenant_id, key, request_fingerprint)

    def replay(self) -> JSONResponse | None:
        """The stored response for this key, or None when the key is new (or absent)."""
        if self.key is None:
            return None
        record = self.db.get(IdempotencyRecord, (self.tenant_id, self.key))
        if record is None:
            return None
        if record.fingerprint != self.fingerprint:
            raise Problem(422, "this Idempotency-Key was used with a different request body",
                          slug="idempotency-key-reused")
        headers = {"Location": record.location} if record.location else {}
        headers["Idempotent-Replayed"] = "true"
        return JSONResponse(record.body, status_code=record.status_code, headers=headers)

    def commit(
        self,
        status_code: int,
        body: Any,
        location: str | None = None,
        on_rollback: Callable[[], None] | None = None,
    ) -> JSONResponse:
        """Commit the request's work together with the response to replay."""
        body = jsonable_encoder(body)
        if self.key is not None:
            self.db.add(IdempotencyRecord(
                tenant_id=self.tenant_id, key=self.key, fingerprint=self.fingerprint,
                status_code=status_code, body=body, location=location))
        try:
            self.db.commit()
        except IntegrityError:
            # A concurrent request with the same key won: undo ours and answer with theirs.
            self.db.rollback()
            if on_rollback:
                on_rollback()
            winner = self.replay()
            if winner is None:
                raise
            return winner
        headers = {"Location": location} if location else {}
        return JSONResponse(body, status_code=status_code, headers=headers)
