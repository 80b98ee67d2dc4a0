"""Webhooks: events announced to a receiver on this machine, signed as Standard Webhooks has
it, retried with backoff when the receiver fails, logged per attempt, re-sendable; a bad
signature is caught by the client's helper; non-public addresses are refused by default,
at subscription and at every attempt, and an attempt connects only to the addresses it
checked (DNS rebinding cannot steer it), keeping the Host header, SNI and certificate check."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import socket
import ssl
import threading
import time
from contextlib import contextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpcore
import pytest

from tests.test_client import MLP

FAST = {"webhook_allow_private": "true", "webhook_backoff_seconds": "0.2"}


class Receiver:
    """An HTTP server on 127.0.0.1 that records each POST and answers ``statuses`` in turn
    (then 200), with ``headers``; over TLS with ``tls`` (a server-side SSL context)."""

    def __init__(self, statuses=(), headers=None, tls: ssl.SSLContext | None = None):
        self.statuses = list(statuses)
        self.received: list[tuple[int, dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["content-length"]))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                receiver.received.append((status, dict(self.headers), body))
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_port
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}/hook"
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


# DNS rebinding: the address checked is the address connected to --------------------------

PUBLIC = "93.184.215.14"  # a public address; the guard below never lets a test connect to it


class FakeDNS:
    """``socket.getaddrinfo`` answering ``answers[host]`` (a list of answers, each a list of
    addresses, taken in turn, the last one repeated) for those hosts; others as usual."""

    def __init__(self, monkeypatch, answers: dict[str, list[list[str]]]):
        self.answers = {host: list(queue) for host, queue in answers.items()}
        self.asked: list[str] = []
        real = socket.getaddrinfo

        def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):  # noqa: A002
            if host not in self.answers:
                return real(host, port, family, type, proto, flags)
            self.asked.append(host)
            queue = self.answers[host]
            answer = queue.pop(0) if len(queue) > 1 else queue[0]
            return [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                     (ip, port or 0, 0, 0)) if ":" in ip else
                    (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (ip, port or 0))
                    for ip in answer]

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


class Connections:
    """Records every TCP connection httpcore opens; one to a public address fails at once
    (no test reaches the internet), the others are made."""

    def __init__(self, monkeypatch):
        self.made: list[tuple[str, int]] = []
        real = httpcore.SyncBackend.connect_tcp

        def connect_tcp(backend, host, port, *args, **kwargs):
            self.made.append((host, port))
            try:
                public = ipaddress.ip_address(host).is_global
            except ValueError:
                public = False
            if public:
                raise httpcore.ConnectError(f"(test) no internet: {host}")
            return real(backend, host, port, *args, **kwargs)

        monkeypatch.setattr(httpcore.SyncBackend, "connect_tcp", connect_tcp)


@contextmanager
def webhook_api(configure, **settings):
    from tests.conftest import api_client

    configure(webhook_backoff_seconds="0", **settings)
    with api_client(run_worker=False) as api:
        yield api


def subscribe_one(api, url: str) -> tuple[str, str]:
    """Subscribe ``url`` (the subscription's check resolves it) and add one delivery, not
    handed to any worker: (the webhook's id, the delivery's id)."""
    from app.core.db import session_scope, utcnow
    from app.core.ids import new_id
    from app.webhooks.tables import WebhookDelivery, WebhookEndpoint

    hook = api.post("/v1/webhooks", json={"url": url, "events": ["*"]})
    assert hook.status_code == 201, hook.text
    with session_scope() as db:
        endpoint = db.get(WebhookEndpoint, hook.json()["id"])
        delivery_id = new_id("msg")
        db.add(WebhookDelivery(id=delivery_id, endpoint_id=endpoint.id,
                               tenant_id=endpoint.tenant_id, event_type="job.queued",
                               payload={"type": "job.queued", "data": {}}, status="pending",
                               attempts=0, next_attempt_at=utcnow()))
    return endpoint.id, delivery_id


@pytest.mark.parametrize("at_delivery", [["127.0.0.1"], ["169.254.169.254"],
                                         [PUBLIC, "127.0.0.1"], ["::1"]])
def test_a_name_rebound_to_a_private_address_after_subscribing_is_refused(
        configure, monkeypatch, at_delivery):
    from app.webhooks import service

    with Receiver() as receiver, webhook_api(configure) as api:
        dns = FakeDNS(monkeypatch, {"hook.example": [[PUBLIC], at_delivery]})
        connections = Connections(monkeypatch)
        hook_id, delivery_id = subscribe_one(api, f"http://hook.example:{receiver.port}/hook")
        assert service.deliver(delivery_id) is None  # refused: for good, not retried
        delivery = api.get(f"/v1/webhooks/{hook_id}/deliveries/{delivery_id}").json()
    assert receiver.received == [] and connections.made == []
    assert dns.asked == ["hook.example", "hook.example"]  # subscribing; the attempt
    assert delivery["status"] == "failed"
    [attempt] = delivery["attempt_log"]
    assert attempt["status_code"] is None
    assert attempt["error"].startswith("refused: 'hook.example' resolves to ")
    assert "non-public" in attempt["error"] and delivery["last_error"] == attempt["error"]


def test_an_attempt_connects_to_the_address_it_checked_never_resolving_again(
        configure, monkeypatch):
    """The attempt's one answer is public; any later lookup would answer 127.0.0.1 (where
    the receiver is): it is never asked, and only the public address is connected to."""
    from app.webhooks import service

    with Receiver() as receiver, webhook_api(configure) as api:
        dns = FakeDNS(monkeypatch, {"hook.example": [[PUBLIC], [PUBLIC], ["127.0.0.1"]]})
        connections = Connections(monkeypatch)
        hook_id, delivery_id = subscribe_one(api, f"http://hook.example:{receiver.port}/hook")
        assert service.deliver(delivery_id) == 0.0  # a connection error: retried
        delivery = api.get(f"/v1/webhooks/{hook_id}/deliveries/{delivery_id}").json()
    assert receiver.received == []
    assert connections.made == [(PUBLIC, receiver.port)]
    assert dns.asked == ["hook.example", "hook.example"]
    assert delivery["status"] == "pending" and delivery["attempts"] == 1
    assert delivery["attempt_log"][0]["error"].startswith("ConnectError: ")


def test_an_allowed_name_is_delivered_with_its_host_header_and_no_redirect(
        configure, monkeypatch):
    from lethe_client.webhooks import verify

    from app.core.db import session_scope
    from app.webhooks import service
    from app.webhooks.tables import WebhookEndpoint

    with Receiver(statuses=[307], headers={"location": "/elsewhere"}) as receiver, \
            webhook_api(configure, webhook_allow_private="true") as api:
        FakeDNS(monkeypatch, {"hook.example": [["127.0.0.1"]]})
        connections = Connections(monkeypatch)
        url = f"http://hook.example:{receiver.port}/hook"
        hook_id, delivery_id = subscribe_one(api, url)
        assert service.deliver(delivery_id) == 0.0  # the 307 is an answer, not followed
        assert service.deliver(delivery_id) is None
        delivery = api.get(f"/v1/webhooks/{hook_id}/deliveries/{delivery_id}").json()
        with session_scope() as db:
            secret = db.get(WebhookEndpoint, hook_id).secret
    assert connections.made == [("127.0.0.1", receiver.port)] * 2
    assert [status for status, _, _ in receiver.received] == [307, 200]
    for _, headers, body in receiver.received:
        assert headers["Host"] == f"hook.example:{receiver.port}"
        assert verify(secret, headers, body)["type"] == "job.queued"
    assert delivery["status"] == "delivered"
    assert [a["status_code"] for a in delivery["attempt_log"]] == [307, 200]


def tls_files(directory, hostname: str):
    """A CA (its PEM file) and a server context with a certificate for ``hostname`` only
    (no IP address in it), recording the SNI names the server is asked for."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(common):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    now = dt.datetime.now(dt.UTC)
    ca_key, key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(2))
    ca = (x509.CertificateBuilder().subject_name(name("test CA")).issuer_name(name("test CA"))
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(name(hostname)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    (directory / "server.pem").write_bytes(leaf.public_bytes(pem) + key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(directory / "server.pem")
    server.sni_names = []  # type: ignore[attr-defined]
    server.sni_callback = lambda _sock, sni, _ctx: server.sni_names.append(sni)
    return directory / "ca.pem", server


def test_https_keeps_sni_and_verification_on_the_hostname(configure, monkeypatch, tmp_path):
    from app.webhooks import service

    ca, server = tls_files(tmp_path, "hook.example")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # httpx's default context trusts the CA
    with Receiver(tls=server) as receiver, \
            webhook_api(configure, webhook_allow_private="true") as api:
        FakeDNS(monkeypatch, {"hook.example": [["127.0.0.1"]],
                              "other.example": [["127.0.0.1"]]})
        connections = Connections(monkeypatch)
        good = subscribe_one(api, f"https://hook.example:{receiver.port}/hook")
        # The certificate names hook.example, not 127.0.0.1: verified against the name.
        assert service.deliver(good[1]) is None
        assert server.sni_names == ["hook.example"]
        [(_, headers, _)] = receiver.received
        assert headers["Host"] == f"hook.example:{receiver.port}"
        # The same server under another name fails verification: it is checked.
        bad = subscribe_one(api, f"https://other.example:{receiver.port}/hook")
        assert service.deliver(bad[1]) == 0.0
        delivery = api.get(f"/v1/webhooks/{bad[0]}/deliveries/{bad[1]}").json()
    assert connections.made == [("127.0.0.1", receiver.port)] * 2
    assert server.sni_names == ["hook.example", "other.example"]
    assert len(receiver.received) == 1
    error = delivery["attempt_log"][0]["error"]
    assert error.startswith("ConnectError: ") and "CERTIFICATE_VERIFY_FAILED" in error


def test_an_unreachable_checked_address_hands_over_to_the_next_one(configure, monkeypatch):
    """A name with two checked addresses: the first refuses the connection, the second is the
    receiver; nothing else is connected to and the name is not resolved again."""
    from app.webhooks import service

    with Receiver() as receiver, webhook_api(configure, webhook_allow_private="true") as api:
        # Private addresses allowed: subscribing does not resolve; the attempt does, once.
        dns = FakeDNS(monkeypatch, {"hook.example": [[PUBLIC, "127.0.0.1"]]})
        connections = Connections(monkeypatch)
        hook_id, delivery_id = subscribe_one(api, f"http://hook.example:{receiver.port}/hook")
        assert service.deliver(delivery_id) is None
        delivery = api.get(f"/v1/webhooks/{hook_id}/deliveries/{delivery_id}").json()
    assert connections.made == [(PUBLIC, receiver.port), ("127.0.0.1", receiver.port)]
    assert dns.asked == ["hook.example"]
    assert delivery["status"] == "delivered"
    [(_, headers, _)] = receiver.received
    assert headers["Host"] == f"hook.example:{receiver.port}"
