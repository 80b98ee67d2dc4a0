"""A tenant's API keys: list, create, revoke (``lethe apikey`` does the same on the database)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core.auth import current_principal
from app.core.db import get_db
from app.core.errors import not_found
from app.core.openapi import AUTHENTICATED, ONE_RESOURCE, problems
from app.tenants.service import Principal, create_api_key, list_api_keys, revoke_api_key

router = APIRouter(prefix="/v1/api-keys", tags=["api keys"])


class ApiKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)


class ApiKeyOut(BaseModel):
    id: str
    name: str
    tenant_id: str
    created_at: datetime
    revoked_at: datetime | None
    current: bool = Field(description="Whether this request was made with it.")

    @classmethod
    def of(cls, key, principal: Principal) -> ApiKeyOut:
        return cls(id=key.id, name=key.name, tenant_id=key.tenant_id,
                   created_at=key.created_at, revoked_at=key.revoked_at,
                   current=key.id == principal.key_id)


class ApiKeyCreated(ApiKeyOut):
    token: str = Field(description="The bearer token, shown only here.")


@router.get("", response_model=list[ApiKeyOut], responses=AUTHENTICATED,
            summary="The tenant's API keys, revoked ones included")
def list_keys(db: Session = Depends(get_db), principal: Principal = Depends(current_principal)):
    return [ApiKeyOut.of(k, principal) for k in list_api_keys(db, principal.tenant_id)]


@router.post("", status_code=201, response_model=ApiKeyCreated,
             responses=problems(400, 401, 422), summary="Another key for the same tenant")
def create_key(body: ApiKeyIn, db: Session = Depends(get_db),
               principal: Principal = Depends(current_principal)):
    key, token = create_api_key(db, body.name, principal.tenant_id)
    audit.record(db, "api_key.created", "api_key", key.id, tenant_id=principal.tenant_id,
                 actor=principal.key_id, data={"name": key.name})
    out = ApiKeyCreated(**ApiKeyOut.of(key, principal).model_dump(), token=token)
    db.commit()
    return out


@router.delete("/{key_id}", status_code=204, response_class=Response,
               responses={204: {"description": "Revoked: it answers 401 from now on."},
                          **ONE_RESOURCE})
def revoke_key(key_id: str, db: Session = Depends(get_db),
               principal: Principal = Depends(current_principal)):
    try:
        key = revoke_api_key(db, key_id, principal.tenant_id)
    except LookupError:
        raise not_found("API key", key_id) from None
    audit.record(db, "api_key.revoked", "api_key", key.id, tenant_id=principal.tenant_id,
                 actor=principal.key_id, data={"name": key.name})
    db.commit()
    return Response(status_code=204)
