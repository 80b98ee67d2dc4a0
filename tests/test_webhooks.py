"""Webhooks: events announced to a receiver on this machine, signed as Standard Webhooks has
it, retried with backoff when the receiver fails, logged per attempt, re-sendable; a bad
signature is caught by the client's helper; non-public addresses are refused by default."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.test_client import MLP

FAST = {"webhook_allow_private": "true", "webhook_backoff_seconds": "0.2"}


class Receiver:
    """An HTTP server on 127.0.0.1 that records each POST and answers ``statuses`` in turn
    (then 200)."""

    def __init__(self, statuses=()):
        self.statuses = list(statuses)
        self.received: list[tuple[int, dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["content-length"]))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                receiver.received.append((status, dict(self.headers), body))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *_):
        self.server.shutdown()
        self.server.server_close()

    def accepted(self) -> list[tuple[dict[str, str], bytes]]:
        return [(h, b) for status, h, b in self.received if status == 200]

    def wait_for(self, predicate, timeout=30.0, what="deliveries"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return
            time.sleep(0.1)
        raise AssertionError(f"no {what} after {timeout} s: {self.received}")


def settled(lethe, hook_id: str, delivery_id: str, timeout: float = 15.0):
    """The delivery once its worker has recorded the outcome (the receiver sees the request
    a moment before the worker writes down the answer)."""
    deadline = time.monotonic() + timeout
    while True:
        delivery = lethe.webhooks.delivery(hook_id, delivery_id)
        if delivery.status != "pending" or time.monotonic() > deadline:
            return delivery
        time.sleep(0.1)


@pytest.fixture
def files(tmp_path, digits_npz, digits_weights):
    (tmp_path / "digits.npz").write_bytes(digits_npz)
    (tmp_path / "mlp.safetensors").write_bytes(digits_weights)
    return tmp_path


def test_deliveries_are_signed_retried_logged_and_resendable(configure, files):
    from lethe_client.webhooks import WebhookVerificationError, sign, verify

    from tests.conftest import live_server_at

    configure(**FAST)
    with Receiver(statuses=[500]) as receiver, live_server_at() as server, \
            server.client() as lethe:
        hook = lethe.webhooks.create(receiver.url, ["deletion_request.completed",
                                                    "model_version.created", "job.succeeded"])
        assert hook.secret.startswith("whsec_")
        assert "secret" not in lethe.webhooks.get(hook.id).model_dump()
        dataset = lethe.datasets.upload(files / "digits.npz")
        model = lethe.models.register(files / "mlp.safetensors", dataset=dataset, **MLP)
        ids = [s.id for s in lethe.datasets.samples(dataset, limit=20)]
        request = lethe.forget(model, sample_ids=ids, method="finetune", params={"epochs": 1})
        request.wait(timeout=60)
        receiver.wait_for(lambda r: len(r.accepted()) == 3)

        events = {}
        for headers, body in receiver.accepted():
            event = verify(hook.secret, headers, body)
            events[event["type"]] = event
        assert set(events) == {"deletion_request.completed", "model_version.created",
                               "job.succeeded"}
        assert events["deletion_request.completed"]["data"]["subject_id"] == request.id
        assert events["model_version.created"]["data"]["version"] == 2

        # The first attempt got a 500: the same message (same webhook-id) came again.
        first_status, first_headers, first_body = receiver.received[0]
        assert first_status == 500
        again = [h for h, _ in receiver.accepted()
                 if h["webhook-id"] == first_headers["webhook-id"]]
        assert len(again) == 1
        for headers, _ in receiver.accepted():
            settled(lethe, hook.id, headers["webhook-id"])
        delivery = lethe.webhooks.delivery(hook.id, first_headers["webhook-id"])
        assert delivery.status == "delivered" and delivery.attempts == 2
        assert [(a.number, a.status_code) for a in delivery.attempt_log] == [(1, 500), (2, 200)]
        listed = list(lethe.webhooks.deliveries(hook.id, status="delivered"))
        assert len(listed) == 3

        # A forged or altered delivery is caught.
        with pytest.raises(WebhookVerificationError):
            verify(hook.secret, first_headers, first_body.replace(b"2", b"3"))
        other_secret = "whsec_" + "A" * 43 + "="
        with pytest.raises(WebhookVerificationError):
            verify(other_secret, first_headers, first_body)
        stale = dict(first_headers, **{"webhook-timestamp": str(int(time.time()) - 3600)})
        stale["webhook-signature"] = sign(hook.secret, stale["webhook-id"],
                                          int(stale["webhook-timestamp"]), first_body)
        with pytest.raises(WebhookVerificationError, match="timestamp"):
            verify(hook.secret, stale, first_body)

        resent = lethe.webhooks.resend(hook.id, delivery.id)
        assert resent.status == "pending"
        receiver.wait_for(lambda r: len(r.accepted()) == 4, what="the resend")
        assert receiver.accepted()[-1][0]["webhook-id"] == delivery.id
        done = settled(lethe, hook.id, delivery.id)
        assert done.status == "delivered" and [a.number for a in done.attempt_log] == [1, 2, 3]

        lethe.webhooks.delete(hook.id)
        assert list(lethe.webhooks.list()) == []


def test_a_delivery_that_keeps_failing_gives_up(configure, digits_npz, digits_weights):
    from app.webhooks import service
    from tests.conftest import api_client
    from tests.test_api_flow import register_digits, sample_ids

    configure(webhook_allow_private="true", webhook_backoff_seconds="0",
              webhook_max_attempts="2")
    with Receiver(statuses=[503, 500]) as receiver, api_client(run_worker=False) as api:
        hook = api.post("/v1/webhooks", json={"url": receiver.url, "events": ["job.queued"]})
        assert hook.status_code == 201, hook.text
        _, model = register_digits(api, digits_npz, digits_weights)
        api.post(f"/v1/models/{model['id']}/deletion-requests",
                 json={"sample_ids": sample_ids(api, model["dataset_id"], 3)})
        [delivery_id] = service.due_deliveries()
        assert service.deliver(delivery_id) == 0.0  # retry at once (backoff 0)
        assert service.deliver(delivery_id) is None  # the second and last attempt
        assert service.deliver(delivery_id) is None  # nothing more to do
        delivery = api.get(f"/v1/webhooks/{hook.json()['id']}/deliveries/{delivery_id}").json()
        assert delivery["status"] == "failed" and delivery["last_error"].endswith("500")
        assert [a["status_code"] for a in delivery["attempt_log"]] == [503, 500]
        assert json.loads(receiver.received[0][2])["type"] == "job.queued"


def test_non_public_addresses_are_refused_unless_allowed(sqlite_api):
    for url in ("http://127.0.0.1:9/hook", "http://localhost/hook", "http://10.1.2.3/",
                "http://169.254.169.254/latest", "http://[::1]/", "ftp://example.org/",
                "http://user:pw@example.org/"):
        response = sqlite_api.post("/v1/webhooks", json={"url": url, "events": ["*"]})
        assert response.status_code == 422, (url, response.text)
        assert response.json()["errors"][0]["field"] == "url"
    unknown = sqlite_api.post("/v1/webhooks", json={"url": "http://127.0.0.1/",
                                                    "events": ["job.exploded"]})
    assert unknown.status_code == 422


def test_an_overdue_request_is_announced_once(configure, digits_npz, digits_weights):
    from app.core.db import session_scope, utcnow
    from app.deletion_requests.service import announce_overdue
    from app.deletion_requests.tables import DeletionRequest
    from app.webhooks.tables import WebhookDelivery
    from tests.conftest import api_client
    from tests.test_api_flow import register_digits, sample_ids

    configure(webhook_allow_private="true")
    with api_client(run_worker=False) as api:
        api.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/",
                                       "events": ["deletion_request.overdue"]})
        _, model = register_digits(api, digits_npz, digits_weights)
        request = api.post(f"/v1/models/{model['id']}/deletion-requests",
                           json={"sample_ids": sample_ids(api, model["dataset_id"], 3)}).json()
        with session_scope() as db:
            db.get(DeletionRequest, request["id"]).deadline = utcnow() - timedelta(days=1)
            assert announce_overdue(db) == 1
            assert announce_overdue(db) == 0
            [delivery] = db.query(WebhookDelivery).all()
            assert delivery.event_type == "deletion_request.overdue"
            assert delivery.payload["data"]["subject_id"] == request["id"]
        events = [e["action"] for e in api.get("/v1/audit").json()["items"]]
        assert events.count("deletion_request.overdue") == 1
