"""The console (/ui) without a browser: sessions, CSRF, tenancy, odd input, the pages' data."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.conftest import Api, create_token
from tests.test_api_flow import register_digits, sample_ids

PAGES = ["/ui/requests", "/ui/models", "/ui/receipts", "/ui/audit", "/ui/audit/verify",
         "/ui/benchmarks"]
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


class Console:
    """A TestClient signed in to the console (its cookie jar holds the session)."""

    def __init__(self, client: TestClient, token: str):
        self.client, self.token = client, token
        self.api = Api(client, token)

    def sign_in(self, token: str | None = None, next: str = "") -> object:
        form = self.client.get("/ui/sign-in")
        csrf = CSRF.search(form.text).group(1)
        return self.client.post("/ui/sign-in", follow_redirects=False, data={
            "token": token or self.token, "csrf_token": csrf, "next": next})

    def csrf(self, path: str = "/ui/requests") -> str:
        return CSRF.search(self.client.get(path).text).group(1)


@pytest.fixture
def console(configure) -> Iterator[Console]:
    from app.main import create_app

    configure()
    with TestClient(create_app(run_worker=False)) as client:
        yield Console(client, create_token("alice"))


def queued_request(console: Console, digits_npz, digits_weights) -> tuple[dict, dict]:
    """A model and a deletion request whose job stays queued (no worker runs here)."""
    _, model = register_digits(console.api, digits_npz, digits_weights)
    ids = sample_ids(console.api, model["dataset_id"], 5)
    response = console.api.post(f"/v1/models/{model['id']}/deletion-requests",
                                json={"sample_ids": ids, "subject": "user-9"})
    assert response.status_code == 202, response.text
    return model, response.json()


def test_pages_redirect_to_sign_in_without_a_session(console):
    for path in [*PAGES, "/ui/models/mdl_x", "/ui/jobs/job_x"]:
        response = console.client.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/ui/sign-in?next=%2Fui%2F"), path
    progress = console.client.get("/ui/jobs/job_x/progress.json")
    assert progress.status_code == 401
    assert progress.headers["content-type"] == "application/problem+json"
    console.client.cookies.set("lethe_console", "key_x:1:nonce:forged", path="/ui")
    assert console.client.get("/ui/requests", follow_redirects=False).status_code == 303


def test_sign_in_sets_a_strict_http_only_cookie_that_holds_no_key(console):
    refused = console.sign_in("lethe_not-a-key")
    assert refused.status_code == 401 and "not valid" in refused.text
    signed = console.sign_in(next="/ui/audit")
    assert signed.status_code == 303 and signed.headers["location"] == "/ui/audit"
    cookie = next(c for c in signed.headers.get_list("set-cookie")
                  if c.startswith("lethe_console="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    assert console.token not in cookie
    page = console.client.get("/ui/requests")
    assert page.status_code == 200 and "alice" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_sign_in_refuses_a_form_without_its_token_and_foreign_redirects(console):
    bare = console.client.post("/ui/sign-in", data={"token": console.token},
                               follow_redirects=False)
    assert bare.status_code == 403
    assert "lethe_console=" not in bare.headers.get("set-cookie", "")
    for target in ("//evil.example/ui/", "https://evil.example/ui/x", "/v1/models"):
        assert console.sign_in(next=target).headers["location"] == "/ui/requests"
        console.client.cookies.clear()


def test_sign_out_needs_the_token_and_ends_the_session(console):
    console.sign_in()
    refused = console.client.post("/ui/sign-out", follow_redirects=False)
    assert refused.status_code == 403
    assert console.client.get("/ui/requests", follow_redirects=False).status_code == 200
    out = console.client.post("/ui/sign-out", data={"csrf_token": console.csrf()},
                              follow_redirects=False)
    assert out.status_code == 303
    assert console.client.get("/ui/requests", follow_redirects=False).status_code == 303


def test_a_revoked_key_ends_its_console_sessions(console):
    from app.core.db import session_scope
    from app.tenants.service import authenticate, revoke_api_key

    console.sign_in()
    with session_scope() as db:
        revoke_api_key(db, authenticate(db, console.token).key_id)
    assert console.client.get("/ui/models", follow_redirects=False).status_code == 303


def test_cancel_without_a_valid_token_or_origin_is_refused_and_changes_nothing(
        console, digits_npz, digits_weights):
    _, request = queued_request(console, digits_npz, digits_weights)
    console.sign_in()
    job_path = f"/ui/jobs/{request['job_id']}"
    token = CSRF.findall(console.client.get(job_path).text)[-1]
    for form, headers in [({}, {}), ({"csrf_token": "forged"}, {}),
                          ({"csrf_token": token}, {"Origin": "https://evil.example"})]:
        refused = console.client.post(f"{job_path}/cancel", data=form, headers=headers,
                                      follow_redirects=False)
        assert refused.status_code == 403, form
        assert console.api.get(f"/v1/jobs/{request['job_id']}").json()["status"] == "queued"
    assert console.api.get(f"/v1/deletion-requests/{request['id']}").json()["status"] == \
        "scheduled"

    done = console.client.post(f"{job_path}/cancel", data={"csrf_token": token},
                               headers={"Origin": "http://testserver"}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == job_path
    assert console.api.get(f"/v1/jobs/{request['job_id']}").json()["status"] == "cancelled"
    assert console.api.get(f"/v1/deletion-requests/{request['id']}").json()["status"] == \
        "rejected"
    again = console.client.post(f"{job_path}/cancel", data={"csrf_token": token})
    assert again.status_code == 409 and "already cancelled" in again.text


def test_a_key_sees_only_what_its_tenant_sees(console, digits_npz, digits_weights):
    model, request = queued_request(console, digits_npz, digits_weights)
    console.sign_in(create_token("bob"))  # another tenant
    for path in (f"/ui/models/{model['id']}", f"/ui/jobs/{request['job_id']}",
                 f"/ui/jobs/{request['job_id']}/progress.json",
                 f"/ui/requests/{request['id']}/receipt.json"):
        assert console.client.get(path).status_code == 404, path
    for path in PAGES:
        page = console.client.get(path)
        assert page.status_code == 200, path
        assert request["id"] not in page.text and model["id"] not in page.text, path
    cancel = console.client.post(f"/ui/jobs/{request['job_id']}/cancel",
                                 data={"csrf_token": console.csrf()})
    assert cancel.status_code == 404
    assert console.api.get(f"/v1/jobs/{request['job_id']}").json()["status"] == "queued"


ODD_QUERIES = [
    "/ui/requests?status=bogus", "/ui/requests?cursor=YQ", "/ui/requests?cursor=%25%25",
    "/ui/requests?model_id=%00", "/ui/requests?subject=" + "x" * 5000,
    "/ui/requests?status=completed&status=failed", "/ui/requests?model_id=%ED%A0%80",
    "/ui/audit?before=-1", "/ui/audit?before=99999999999", "/ui/audit?before=1e3",
    "/ui/audit/verify?anchor_seq=1", "/ui/audit/verify?anchor_seq=1&anchor_hash=zz",
    "/ui/audit/verify?anchor_seq=abc&anchor_hash=" + "0" * 64,
    "/ui/sign-in?next=javascript:alert(1)", "/ui/jobs/%00", "/ui/models/..%2F..",
    "/ui/requests/dr_x/receipt.json", "/ui/benchmarks?x=%FF",
]


def test_odd_query_parameters_get_a_clear_answer_never_a_500(console):
    console.sign_in()
    for path in ODD_QUERIES:
        response = console.client.get(path, follow_redirects=False)
        assert response.status_code < 500, (path, response.text[:300])
    bad = console.client.get("/ui/requests?status=bogus")
    assert bad.status_code == 422 and "status: &#39;bogus&#39; is not one of" in bad.text


def test_overdue_requests_come_first_and_are_marked_in_words(configure, digits_npz,
                                                              digits_weights):
    from app.main import create_app

    configure(deletion_deadline_days="0")  # every open request is overdue at once
    with TestClient(create_app(run_worker=False)) as client:
        console = Console(client, create_token("alice"))
        model, late = queued_request(console, digits_npz, digits_weights)
        console.sign_in()
        page = console.client.get("/ui/requests").text
        overdue = page[page.index('id="overdue-title"'):page.index('id="all-title"')]
        assert "Overdue: 1" in overdue and late["id"] in overdue and "OVERDUE" in overdue
        assert "overdue by" in overdue
        filtered = console.client.get("/ui/requests", params={"subject": "nobody"}).text
        assert late["id"] not in filtered and "Overdue: 0" in filtered
        by_model = console.client.get("/ui/requests", params={"model_id": model["id"],
                                                              "status": "scheduled"}).text
        assert late["id"] in by_model


def test_audit_verify_reports_the_chain_and_a_stale_anchor(console, digits_npz,
                                                            digits_weights):
    queued_request(console, digits_npz, digits_weights)
    console.sign_in()
    good = console.client.get("/ui/audit/verify").text
    assert "Verified: the chain is intact" in good and "deletion_request.received" in good
    stale = console.client.get("/ui/audit/verify", params={"anchor_seq": "1",
                                                           "anchor_hash": "0" * 64}).text
    assert "NOT VALID" in stale and "no longer has the anchor" in stale
    full = console.client.get("/ui/audit/verify", params={"full": "1"}).text
    assert "Verified: the chain is intact" in full and "Every event was re-hashed" in full
    assert 'name="full" value="1" checked' in full


def write_results(folder, rows) -> None:
    (folder / "zoo").mkdir(parents=True)
    (folder / "zoo" / "results.json").write_text(json.dumps(
        {"preset": "zoo", "description": "A made-up run.", "scenarios": ["class"],
         "rows": rows}))


def row(method, gap, passed, trials=4, speedup=5.0):
    return {"scenario": "class", "method": method, "label": method, "avg_gap_salun": gap,
            "speedup": speedup, "gate_passed": passed, "gate_trials": trials, "ua": 99.0,
            "ra": 90.0}


def test_benchmark_recommends_the_gates_favourite_and_degrades_without_results(
        console, tmp_path, monkeypatch):
    from app.core.db import reset_caches

    console.sign_in()
    committed = console.client.get("/ui/benchmarks")
    assert committed.status_code == 200 and "Recommended:" in committed.text
    # The default chains, replayed on the committed zoo run (benchmarks/zoo/chains.md).
    assert ("tries <code>projected-gradient → feature-constraint → retrain</code>"
            in committed.text)
    assert "published an approximation on 12 of 12" in committed.text
    assert console.client.get("/ui/benchmarks/tradeoff.png").headers["content-type"] == \
        "image/png"

    write_results(tmp_path / "made-up", [row("retrain", 0.0, 4), row("fast", 1.0, 2),
                                         row("steady", 3.0, 4), row("also-steady", 4.0, 4)])
    monkeypatch.setenv("LETHE_BENCHMARKS_DIR", str(tmp_path / "made-up"))
    reset_caches()
    page = console.client.get("/ui/benchmarks").text
    assert "Recommended: steady" in page and "A made-up run." in page
    assert "names no method tries" not in page  # no per-seed rows: nothing to replay
    assert page.index(">steady") < page.index(">also-steady") < page.index(">fast")
    assert console.client.get("/ui/benchmarks/tradeoff.png").status_code == 404

    monkeypatch.setenv("LETHE_BENCHMARKS_DIR", str(tmp_path / "empty"))
    reset_caches()
    missing = console.client.get("/ui/benchmarks")
    assert missing.status_code == 200 and "No benchmark results were found" in missing.text


def test_the_accuracy_plot_draws_what_was_measured():
    from app.console.plot import accuracy_plot

    svg = accuracy_plot([(1, {"forget_accuracy": 98.0, "retain_accuracy": 97.0,
                              "test_accuracy": None}),
                         (2, {"forget_accuracy": 1.0, "retain_accuracy": 96.0,
                              "test_accuracy": 95.5})])
    assert svg.startswith("<svg") and svg.count("<polyline") == 2  # test has one point
    assert "v2: forget 1.0%, retain 96.0%, test 95.5%" in svg
    assert "not measured" in accuracy_plot([(1, {})])


def test_a_models_lineage_names_its_requests_verdicts_and_withdrawals(configure, digits_npz,
                                                                      digits_weights):
    from app.main import create_app

    configure()
    with TestClient(create_app()) as client:  # with its in-process worker
        console = Console(client, create_token("alice"))
        _, model = register_digits(console.api, digits_npz, digits_weights)
        ids = sample_ids(console.api, model["dataset_id"], 30)
        request = console.api.post(f"/v1/models/{model['id']}/deletion-requests", json={
            "sample_ids": ids, "method": "finetune", "params": {"epochs": 1}}).json()
        assert console.api.wait_for_job(request["job_id"])["status"] == "succeeded"
        console.sign_in()
        progress = console.client.get(f"/ui/jobs/{request['job_id']}/progress.json").json()
        assert progress["final"] and progress["progress"] == 1.0
        assert progress["candidates"][0]["verdict"] == "passed"

        page = console.client.get(f"/ui/models/{model['id']}").text
        first, second = page.split('<li id="v1"')[1].split('<li id="v2"')
        assert "WITHDRAWN" in first and "410 Gone" in first
        assert "WITHDRAWN" not in second and "latest" in second
        assert request["id"] in second and f"/ui/requests/{request['id']}/receipt.json" in second
        assert "forgetting <strong>30</strong> samples" in second
        assert re.search(r"Acceptance gate:\s*<strong[^>]*>PASSED", second)
        assert page.count("<polyline") == 3  # v1 measured by v2's gate, then v2
        receipt = console.client.get(f"/ui/requests/{request['id']}/receipt.json")
        assert receipt.headers["content-disposition"].startswith("attachment")
        assert receipt.json()["receipt"]["version_after"]["version"] == 2


def test_the_session_secret_is_kept_in_lethe_home_unless_configured(configure, monkeypatch):
    from app.console import session
    from app.core.db import reset_caches

    home = configure()
    first = session.secret()
    kept = home / "console-secret"
    assert kept.read_text().strip().encode() == first and len(first) >= 32
    assert kept.stat().st_mode & 0o777 == 0o600
    assert session.secret() == first  # the same on every call, and in every replica

    monkeypatch.setenv("LETHE_CONSOLE_SECRET", "s" * 40)
    reset_caches()
    assert session.secret() == b"s" * 40
