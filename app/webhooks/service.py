"""Webhooks: a tenant subscribes a URL to events; each event becomes a signed delivery.

The events are audit events (:data:`EVENT_TYPES`): :func:`enqueue`, called by
``audit.record`` in the transaction that records the event, adds one delivery row per
subscribed endpoint (a transactional outbox: no event is announced that did not happen, none
that happened is lost). Once that transaction commits, the deliveries are handed to the
workers (a Celery task that retries itself with backoff, or the in-process worker's delivery
threads), and a sweeper re-sends any whose message was lost.

Deliveries follow the Standard Webhooks conventions (standardwebhooks.com): headers
``webhook-id`` (the delivery's id, the same on every retry: receivers dedupe on it),
``webhook-timestamp`` (Unix seconds) and ``webhook-signature`` (``v1,`` + base64 of the
HMAC-SHA256, keyed by the endpoint's secret, of ``id.timestamp.body``). Every attempt is
logged. Addresses on loopback, private, link-local and other special networks are refused
unless ``LETHE_WEBHOOK_ALLOW_PRIVATE`` says otherwise, both when subscribing and at every
delivery attempt. Each attempt resolves the name once, refuses it if any of its addresses
is refused, and connects only to those checked addresses (the request's URL names the
address, :func:`_post_pinned`): the connection never resolves the name again, so a DNS
answer that changes between the check and the connection (DNS rebinding) cannot steer a
delivery to this machine or its network. The request still carries the URL's host (the
``Host`` header, and for https the TLS SNI name and the certificate check), and redirects
are not followed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import httpx
from sqlalchemy import event, func, or_, select, update
from sqlalchemy.orm import Session

from app.core.config import get_settings
from app.core.db import new_session, session_scope, utcnow
from app.core.errors import invalid, not_found
from app.core.ids import new_id
from app.core.pagination import PageParams
from app.tenants.service import Principal
from app.webhooks.tables import WebhookAttempt, WebhookDelivery, WebhookEndpoint

log = logging.getLogger(__name__)

EVENT_TYPES = (
    "deletion_request.completed", "deletion_request.failed", "deletion_request.rejected",
    "deletion_request.overdue",
    "job.queued", "job.started", "job.requeued", "job.succeeded", "job.failed",
    "job.cancelled",
    "model_version.created", "model_version.withdrawn",
)
ALL = "*"
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
_AFTER_COMMIT = "lethe.webhook_deliveries"


# Subscriptions --------------------------------------------------------------------------------

def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def resolve(host: str, port: int | None = None) -> list[str]:
    """The addresses ``host`` resolves to for TCP, in the resolver's order, without repeats
    (raises ``OSError``/``UnicodeError`` when it does not resolve). Sends nothing to them."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def refused_addresses(host: str, addresses: Iterable[str]) -> str | None:
    """Why ``host``, resolved to ``addresses``, may not be delivered to (one of them is a
    loopback, private, link-local, multicast or reserved address), or None. One refused
    address refuses the name: a name answering both kinds is misconfigured or hostile (the
    mix is how rebinding attacks get a client to fall back), and delivering to only the
    public ones would hide that."""
    if get_settings().webhook_allow_private:
        return None
    for text in addresses:
        address = ipaddress.ip_address(text.split("%")[0])
        if not address.is_global or address.is_multicast:
            return (f"{host!r} resolves to {address}, a non-public address "
                    "(LETHE_WEBHOOK_ALLOW_PRIVATE allows those)")
    return None


def refused_address(host: str) -> str | None:
    """Why ``host`` may not be delivered to (it names or resolves to a loopback, private,
    link-local, multicast or reserved address), or None. Resolving sends nothing to it."""
    if get_settings().webhook_allow_private:
        return None
    try:
        addresses = resolve(host)
    except (OSError, UnicodeError) as exc:
        return f"{host!r} does not resolve ({exc})"
    return refused_addresses(host, addresses)


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise invalid("url: an http:// or https:// URL with a host",
                      errors=[{"field": "url", "message": "not an http(s) URL"}])
    if parts.username or parts.password:
        raise invalid("url: credentials in the URL are not allowed; check the signature "
                      "instead", errors=[{"field": "url", "message": "has credentials"}])
    if reason := refused_address(parts.hostname):
        raise invalid(f"url: {reason}", errors=[{"field": "url", "message": reason}])
    return url


def check_events(events: list[str]) -> list[str]:
    unknown = [e for e in events if e != ALL and e not in EVENT_TYPES]
    if unknown:
        raise invalid(f"events: unknown {unknown}; known: {', '.join(EVENT_TYPES)} (or '*')",
                      errors=[{"field": "events", "message": f"unknown: {unknown}"}])
    return sorted(set(events))


def create_endpoint(db: Session, principal: Principal, url: str, events: list[str],
                    description: str | None) -> WebhookEndpoint:
    from app.audit import service as audit

    endpoint = WebhookEndpoint(id=new_id("whk"), tenant_id=principal.tenant_id,
                               url=check_url(url), events=check_events(events),
                               description=description, secret=new_secret())
    db.add(endpoint)
    db.flush()
    audit.record(db, "webhook.created", "webhook", endpoint.id, tenant_id=principal.tenant_id,
                 actor=principal.key_id, data={"url": url, "events": endpoint.events})
    return endpoint


def get_endpoint(db: Session, principal: Principal, endpoint_id: str) -> WebhookEndpoint:
    endpoint = db.get(WebhookEndpoint, endpoint_id)
    if endpoint is None or endpoint.tenant_id != principal.tenant_id:
        raise not_found("webhook", endpoint_id)
    return endpoint


def list_endpoints(db: Session, principal: Principal, page: PageParams):
    query = select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == principal.tenant_id)
    if page.after:
        query = query.where(WebhookEndpoint.id > page.after)
    return list(db.scalars(query.order_by(WebhookEndpoint.id).limit(page.limit + 1)))


def delete_endpoint(db: Session, principal: Principal, endpoint: WebhookEndpoint) -> None:
    from app.audit import service as audit

    db.delete(endpoint)
    audit.record(db, "webhook.deleted", "webhook", endpoint.id, tenant_id=principal.tenant_id,
                 actor=principal.key_id, data={"url": endpoint.url})


def list_deliveries(db: Session, endpoint: WebhookEndpoint, page: PageParams,
                    status: str | None):
    query = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)
    if status:
        query = query.where(WebhookDelivery.status == status)
    if page.after:
        query = query.where(WebhookDelivery.id > page.after)
    return list(db.scalars(query.order_by(WebhookDelivery.id).limit(page.limit + 1)))


def get_delivery(db: Session, endpoint: WebhookEndpoint, delivery_id: str) -> WebhookDelivery:
    delivery = db.get(WebhookDelivery, delivery_id)
    if delivery is None or delivery.endpoint_id != endpoint.id:
        raise not_found("delivery", delivery_id)
    return delivery


def attempts_of(db: Session, delivery_ids: list[str]) -> dict[str, list[WebhookAttempt]]:
    found: dict[str, list[WebhookAttempt]] = {i: [] for i in delivery_ids}
    if delivery_ids:
        for attempt in db.scalars(select(WebhookAttempt).where(
                WebhookAttempt.delivery_id.in_(delivery_ids)).order_by(WebhookAttempt.id)):
            found[attempt.delivery_id].append(attempt)
    return found


def resend(db: Session, delivery: WebhookDelivery) -> None:
    """Deliver again (the same ``webhook-id``), with a whole new round of attempts."""
    delivery.status, delivery.attempts, delivery.next_attempt_at = PENDING, 0, utcnow()
    _after_commit(db, delivery.id)


# The outbox -----------------------------------------------------------------------------------

def enqueue(db: Session, audit_event) -> None:
    """Called by ``audit.record`` in the event's own transaction."""
    if audit_event.tenant_id is None or audit_event.action not in EVENT_TYPES:
        return
    endpoints = db.scalars(select(WebhookEndpoint).where(
        WebhookEndpoint.tenant_id == audit_event.tenant_id)).all()
    payload = {"type": audit_event.action,
               "timestamp": audit_event.at.isoformat(timespec="milliseconds"),
               "data": {"subject_type": audit_event.subject_type,
                        "subject_id": audit_event.subject_id, "audit_seq": audit_event.seq,
                        **audit_event.data}}
    for endpoint in endpoints:
        if ALL in endpoint.events or audit_event.action in endpoint.events:
            delivery = WebhookDelivery(id=new_id("msg"), endpoint_id=endpoint.id,
                                       tenant_id=endpoint.tenant_id,
                                       event_type=audit_event.action, payload=payload,
                                       status=PENDING, attempts=0, next_attempt_at=utcnow())
            db.add(delivery)
            _after_commit(db, delivery.id)


def _after_commit(db: Session, delivery_id: str) -> None:
    db.info.setdefault(_AFTER_COMMIT, []).append(delivery_id)


@event.listens_for(Session, "after_commit")
def _send_committed(session: Session) -> None:
    """Hand the deliveries of a committed transaction to the workers (never raises: the
    sweeper re-sends what this misses)."""
    delivery_ids = session.info.pop(_AFTER_COMMIT, None)
    if not delivery_ids:
        return
    from worker.dispatch import send_webhook

    for delivery_id in delivery_ids:
        try:
            send_webhook(delivery_id)
        except Exception:  # noqa: BLE001
            log.exception("could not hand webhook delivery %s over; the sweeper will",
                          delivery_id)


@event.listens_for(Session, "after_rollback")
def _drop_rolled_back(session: Session) -> None:
    session.info.pop(_AFTER_COMMIT, None)


# Delivery -------------------------------------------------------------------------------------

def body_of(delivery: WebhookDelivery) -> bytes:
    return json.dumps(delivery.payload, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def backoff(attempt: int) -> float:
    """Seconds before the attempt after ``attempt`` (1, 2, …) failed."""
    settings = get_settings()
    return min(settings.webhook_backoff_seconds * 2 ** (attempt - 1),
               settings.webhook_max_backoff_seconds)


def _claim(delivery_id: str) -> tuple[WebhookDelivery, WebhookEndpoint] | float | None:
    """Take the next attempt: the delivery and its endpoint; seconds to wait when it is not
    due yet; None when there is nothing to do (delivered, failed, gone, or another worker
    is at it)."""
    with session_scope() as db:
        delivery = db.get(WebhookDelivery, delivery_id)
        if delivery is None or delivery.status != PENDING:
            return None
        now = utcnow()
        if delivery.next_attempt_at is not None and delivery.next_attempt_at > now:
            return (delivery.next_attempt_at - now).total_seconds()
        # A guarded update: of two workers holding a message for it, one attempts it. The
        # lease covers the attempt; a worker that dies mid-attempt leaves it to the sweeper.
        lease = now + timedelta(seconds=get_settings().webhook_timeout_seconds + 30)
        taken = db.execute(update(WebhookDelivery).where(
            WebhookDelivery.id == delivery_id, WebhookDelivery.status == PENDING,
            WebhookDelivery.attempts == delivery.attempts,
            or_(WebhookDelivery.next_attempt_at.is_(None),
                WebhookDelivery.next_attempt_at <= now),
        ).values(attempts=delivery.attempts + 1, next_attempt_at=lease)
         .execution_options(synchronize_session=False)).rowcount
        if not taken:
            return None
        return delivery, db.get(WebhookEndpoint, delivery.endpoint_id)


def _post(endpoint: WebhookEndpoint, delivery: WebhookDelivery) -> tuple[int | None, str | None]:
    """One attempt: (the receiver's status, None) or (a status or None, why it failed). An
    error starting ``refused:`` is permanent; any other is retried. Never raises."""
    try:
        url = httpx.URL(endpoint.url)
        # The host as the connection will name it (httpx's own parse; IDNA-encoded).
        host = url.raw_host.decode("ascii")
        if url.scheme not in ("http", "https") or not host:
            return None, f"refused: {endpoint.url!r} is not an http(s) URL with a host"
    except (httpx.InvalidURL, UnicodeError) as exc:
        return None, f"refused: {endpoint.url!r} is not a valid URL ({exc})"[:500]
    try:
        addresses = resolve(host, url.port or (443 if url.scheme == "https" else 80))
    except (OSError, UnicodeError) as exc:  # the resolver may be down for a while: retried
        return None, f"ConnectError: {host!r} does not resolve ({exc})"[:500]
    if reason := refused_addresses(host, addresses):
        return None, f"refused: {reason}"[:500]
    body = body_of(delivery)
    timestamp = int(time.time())
    headers = {"content-type": "application/json", "user-agent": "Lethe-Webhooks/1",
               "webhook-id": delivery.id, "webhook-timestamp": str(timestamp),
               "webhook-signature": signature(endpoint.secret, delivery.id, timestamp, body),
               "Host": url.netloc.decode("ascii")}
    try:
        # No redirects (a 30x must not send the delivery elsewhere), no proxies or netrc
        # from the environment (a proxy would resolve the name itself); certificates are
        # verified as httpx does by default (SSL_CERT_FILE/SSL_CERT_DIR still apply).
        with httpx.Client(follow_redirects=False, trust_env=False,
                          verify=httpx.create_ssl_context(),
                          timeout=get_settings().webhook_timeout_seconds) as client:
            status_code = _post_pinned(client, url, host, addresses, body, headers)
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"[:500]
    except Exception as exc:  # noqa: BLE001 - an attempt records its failure, never raises
        log.exception("webhook delivery %s: unexpected error", delivery.id)
        return None, f"{type(exc).__name__}: {exc}"[:500]
    if 200 <= status_code < 300:
        return status_code, None
    return status_code, f"the receiver answered {status_code}"


def _post_pinned(client: httpx.Client, url: httpx.URL, host: str, addresses: list[str],
                 body: bytes, headers: dict[str, str]) -> int:
    """POST to each checked address in turn until one accepts the connection; the receiver's
    status. The URL names the address, so nothing resolves the name again; the ``Host``
    header and, for https, the TLS SNI name and certificate check (httpcore's
    ``sni_hostname``) still name the host."""
    failure: httpx.TransportError | None = None
    for address in addresses:
        try:
            response = client.post(url.copy_with(host=address), content=body, headers=headers,
                                   extensions={"sni_hostname": host})
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            failure = exc  # this address does not answer: the next one may
            continue
        return response.status_code
    assert failure is not None, "resolve() returns at least one address"
    raise failure


def deliver(delivery_id: str) -> float | None:
    """Make the delivery's next attempt; seconds until the one after when it must be
    retried, None when it is done (delivered, failed for good, or not ours to do)."""
    claimed = _claim(delivery_id)
    if not isinstance(claimed, tuple):
        return claimed
    delivery, endpoint = claimed
    if endpoint is None:
        return None
    started = time.perf_counter()
    status_code, error = _post(endpoint, delivery)
    elapsed = int((time.perf_counter() - started) * 1000)
    settings = get_settings()
    with session_scope() as db:
        number = db.scalar(select(func.count()).select_from(WebhookAttempt).where(
            WebhookAttempt.delivery_id == delivery_id)) + 1
        db.add(WebhookAttempt(delivery_id=delivery_id, number=number, status_code=status_code,
                              error=error, duration_ms=elapsed))
        row = db.get(WebhookDelivery, delivery_id)
        if row is None:
            return None
        row.last_error = error
        if error is None:
            row.status, row.delivered_at, row.next_attempt_at = DELIVERED, utcnow(), None
            return None
        permanent = error.startswith("refused:")
        if permanent or row.attempts >= settings.webhook_max_attempts:
            row.status, row.next_attempt_at = FAILED, None
            return None
        wait = backoff(row.attempts)
        row.next_attempt_at = utcnow() + timedelta(seconds=wait)
        log.info("webhook delivery %s attempt %d failed (%s); again in %.1f s", delivery_id,
                 row.attempts, error, wait)
        return wait


def due_deliveries(limit: int = 100, stale_after: float = 0.0) -> list[str]:
    """Pending deliveries whose next attempt is due (``stale_after`` seconds ago or more)."""
    cutoff: datetime = utcnow() - timedelta(seconds=stale_after)
    with new_session() as db:
        return list(db.scalars(select(WebhookDelivery.id).where(
            WebhookDelivery.status == PENDING,
            or_(WebhookDelivery.next_attempt_at.is_(None),
                WebhookDelivery.next_attempt_at <= cutoff),
        ).order_by(WebhookDelivery.next_attempt_at).limit(limit)))
