"""Tenants and their API keys."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import and_, bindparam, select
from sqlalchemy.orm import Session

from app.core.db import utcnow
from app.core.ids import new_id
from app.tenants.tables import ApiKey, Tenant

TOKEN_PREFIX = "lethe_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant owning every resource they touch, and the key they used."""

    tenant_id: str
    key_id: str


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_api_key(session: Session, name: str, tenant_id: str | None = None) -> tuple[ApiKey, str]:
    """A new key (and a new tenant named ``name`` unless ``tenant_id`` is given)."""
    if tenant_id is None:
        tenant = Tenant(id=new_id("ten"), name=name)
        session.add(tenant)
        session.flush()
        tenant_id = tenant.id
    elif session.get(Tenant, tenant_id) is None:
        raise LookupError(f"tenant {tenant_id!r} does not exist")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(id=new_id("key"), tenant_id=tenant_id, name=name, token_hash=hash_token(token))
    session.add(key)
    session.flush()
    return key, token


# What makes a key valid, for every query that authenticates (bound as token_hash, see
# live_key_params): the token's hash, not revoked.
LIVE_KEY = and_(ApiKey.token_hash == bindparam("token_hash"), ApiKey.revoked_at.is_(None))


def live_key_params(token: str) -> dict[str, str]:
    return {"token_hash": hash_token(token)}


def authenticate(session: Session, token: str) -> Principal | None:
    # Two columns, not an ORM object: every request of every route pays for this lookup.
    key = session.execute(select(ApiKey.tenant_id, ApiKey.id).where(LIVE_KEY),
                          live_key_params(token)).first()
    return Principal(key.tenant_id, key.id) if key else None


def list_api_keys(session: Session, tenant_id: str) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant_id)
                                .order_by(ApiKey.id)))


def revoke_api_key(session: Session, key_id: str, tenant_id: str | None = None) -> ApiKey:
    """Revoke a key (of ``tenant_id`` when given); it answers 401 from then on."""
    key = session.get(ApiKey, key_id)
    if key is None or (tenant_id is not None and key.tenant_id != tenant_id):
        raise LookupError(f"API key {key_id!r} does not exist")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
    return key
