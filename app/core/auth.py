"""Bearer-token authentication for every /v1 route."""

from __future__ import annotations

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.core.db import get_db
from app.core.errors import Problem
from app.tenants.service import Principal, authenticate

bearer = HTTPBearer(auto_error=False, description="An API key from `lethe apikey create`.")


def unauthorized(detail: str) -> Problem:
    return Problem(401, detail, slug="unauthorized", headers={"WWW-Authenticate": "Bearer"})


def current_principal(
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    db: Session = Depends(get_db),
) -> Principal:
    if credentials is None:
        raise unauthorized("missing bearer token")
    principal = authenticate(db, credentials.credentials)
    if principal is None:
        raise unauthorized("invalid or revoked token")
    return principal
