from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query, Response
from sqlalchemy.orm import Session

from app.core.auth import current_principal
from app.core.db import get_db
from app.core.idempotency import Idempotency, fingerprint, idempotency_key
from app.core.openapi import ONE_RESOURCE, VALIDATED, problems
from app.core.pagination import Page, PageParams, page_of, page_params
from app.tenants.service import Principal
from app.webhooks import service
from app.webhooks.schemas import DeliveryOut, WebhookCreated, WebhookIn, WebhookOut

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


@router.post("", status_code=201, response_model=WebhookCreated,
             responses=problems(400, 401, 413, 422),
             summary="Subscribe a URL to events (Standard Webhooks, HMAC-SHA256 signed)")
def create_webhook(body: WebhookIn, key: str | None = Depends(idempotency_key),
                   db: Session = Depends(get_db),
                   principal: Principal = Depends(current_principal)):
    idem = Idempotency(db, principal.tenant_id, key, fingerprint(body.model_dump(mode="json")))
    if replay := idem.replay():
        return replay
    endpoint = service.create_endpoint(db, principal, body.url, body.events, body.description)
    return idem.commit(201, WebhookCreated.of(endpoint), f"/v1/webhooks/{endpoint.id}")


@router.get("", response_model=Page[WebhookOut], responses=VALIDATED)
def list_webhooks(page: PageParams = Depends(page_params), db: Session = Depends(get_db),
                  principal: Principal = Depends(current_principal)):
    rows = service.list_endpoints(db, principal, page)
    return page_of(rows, page, key=lambda e: e.id, convert=WebhookOut.of)


@router.get("/{webhook_id}", response_model=WebhookOut, responses=ONE_RESOURCE)
def get_webhook(webhook_id: str, db: Session = Depends(get_db),
                principal: Principal = Depends(current_principal)):
    return WebhookOut.of(service.get_endpoint(db, principal, webhook_id))


@router.delete("/{webhook_id}", status_code=204, response_class=Response,
               responses={204: {"description": "Unsubscribed; its deliveries are gone."},
                          **ONE_RESOURCE})
def delete_webhook(webhook_id: str, db: Session = Depends(get_db),
                   principal: Principal = Depends(current_principal)):
    endpoint = service.get_endpoint(db, principal, webhook_id)
    service.delete_endpoint(db, principal, endpoint)
    db.commit()
    return Response(status_code=204)


@router.get("/{webhook_id}/deliveries", response_model=Page[DeliveryOut],
            responses=ONE_RESOURCE, summary="Deliveries, oldest first, each with its attempts")
def list_deliveries(
    webhook_id: str,
    status: Literal["pending", "delivered", "failed"] | None = Query(None),
    page: PageParams = Depends(page_params), db: Session = Depends(get_db),
    principal: Principal = Depends(current_principal),
):
    endpoint = service.get_endpoint(db, principal, webhook_id)
    rows = service.list_deliveries(db, endpoint, page, status)
    attempts = service.attempts_of(db, [d.id for d in rows])
    return page_of(rows, page, key=lambda d: d.id,
                   convert=lambda d: DeliveryOut.of(d, attempts[d.id]))


@router.get("/{webhook_id}/deliveries/{delivery_id}", response_model=DeliveryOut,
            responses=ONE_RESOURCE)
def get_delivery(webhook_id: str, delivery_id: str, db: Session = Depends(get_db),
                 principal: Principal = Depends(current_principal)):
    delivery = service.get_delivery(db, service.get_endpoint(db, principal, webhook_id),
                                    delivery_id)
    return DeliveryOut.of(delivery, service.attempts_of(db, [delivery.id])[delivery.id])


@router.post("/{webhook_id}/deliveries/{delivery_id}/resend", status_code=202,
             response_model=DeliveryOut, responses=ONE_RESOURCE,
             summary="Deliver again (same webhook-id), with a new round of attempts")
def resend_delivery(webhook_id: str, delivery_id: str, db: Session = Depends(get_db),
                    principal: Principal = Depends(current_principal)):
    delivery = service.get_delivery(db, service.get_endpoint(db, principal, webhook_id),
                                    delivery_id)
    service.resend(db, delivery)
    db.commit()
    return DeliveryOut.of(delivery, service.attempts_of(db, [delivery.id])[delivery.id])
