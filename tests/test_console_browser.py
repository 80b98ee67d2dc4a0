"""The console in a real browser (Debian's chromium driven by Playwright) against the app on a
real port with its in-process worker: sign in, follow a deletion request to completion, see an
overdue one flagged and cancel it, download a receipt, verify the audit trail.

``LETHE_CONSOLE_SCREENSHOTS=DIR`` also saves the main pages as PNGs there
(``scripts/console_screenshots.py`` regenerates docs/console/ that way)."""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from tests.conftest import create_token, point_lethe_at, reset_caches
from tests.services import served

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = os.environ.get("LETHE_CONSOLE_SCREENSHOTS")
pytestmark = pytest.mark.slow


def require_browser() -> None:
    """Skip where chromium or Playwright is absent (a laptop); fail where CI demands them."""
    reason = None
    if not Path(CHROMIUM).exists():
        reason = f"{CHROMIUM} is absent (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "playwright is not installed (make install installs the dev extra)"
    if reason is None:
        return
    if os.environ.get("LETHE_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason}, and LETHE_REQUIRE_SERVICES=1 forbids skipping", pytrace=False)
    pytest.skip(reason)


class Service:
    """The live app, its REST API (to set things up as a client would) and a key."""

    def __init__(self, port: int, token: str):
        self.url = f"http://127.0.0.1:{port}"
        self.token = token
        self.http = httpx.Client(base_url=self.url, timeout=60,
                                 headers={"Authorization": f"Bearer {token}"})

    def register(self, npz: bytes, weights: bytes, name: str) -> dict:
        dataset = self.http.post("/v1/datasets", data={"name": f"{name}-data"},
                                 files={"file": ("digits.npz", io.BytesIO(npz))})
        assert dataset.status_code == 201, dataset.text
        model = self.http.post("/v1/models", data={
            "name": name, "architecture": "mlp", "dataset_id": dataset.json()["id"],
            "architecture_config": '{"hidden": [64]}'},
            files={"weights": ("w.safetensors", io.BytesIO(weights))})
        assert model.status_code == 201, model.text
        return model.json()

    def forget(self, model: dict, count: int = 0, **body) -> dict:
        """A deletion request for the first ``count`` samples (or what ``body`` names)."""
        if count:
            samples = self.http.get(f"/v1/datasets/{model['dataset_id']}/samples",
                                    params={"limit": count}).json()["items"]
            body["sample_ids"] = [s["id"] for s in samples]
        response = self.http.post(f"/v1/models/{model['id']}/deletion-requests", json=body)
        assert response.status_code == 202, response.text
        return response.json()


@pytest.fixture(scope="module")
def service(tmp_path_factory, digits_npz, digits_weights) -> Iterator[Service]:
    from app.main import create_app

    require_browser()
    with pytest.MonkeyPatch.context() as monkeypatch:
        # Jobs wait 2 s for requests to coalesce, long enough to see one scheduled first.
        point_lethe_at(monkeypatch, tmp_path_factory.mktemp("console") / "home",
                       coalesce_window_seconds="2")
        with served(create_app(), lifespan="on") as port:
            live = Service(port, create_token("privacy-office"))
            live.models = {name: live.register(digits_npz, digits_weights, name)
                           for name in ("digits-mlp", "backlog-mlp")}
            yield live
            live.http.close()
        reset_caches()


@pytest.fixture(scope="module")
def browser(service):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, service):
    """A fresh browser context, signed in through the form as a person would."""
    context = browser.new_context(viewport={"width": 1366, "height": 900},
                                  accept_downloads=True)
    tab = context.new_page()
    tab.set_default_timeout(20_000)
    tab.goto(f"{service.url}/ui/requests")
    assert "/ui/sign-in" in tab.url  # no session yet: sent to sign in
    tab.get_by_label("API key").fill(service.token)
    tab.get_by_role("button", name="Sign in").click()
    tab.wait_for_url("**/ui/requests")
    yield tab
    context.close()


def screenshot(tab, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"), full_page=True)


def test_sign_in_works_from_the_keyboard_and_refuses_a_wrong_key(browser, service):
    context = browser.new_context()
    tab = context.new_page()
    tab.goto(f"{service.url}/ui/models")
    focused = "document.activeElement.id || document.activeElement.textContent"
    assert tab.evaluate(focused) == "token"  # the key field has the focus at once
    tab.keyboard.type("lethe_wrong")
    tab.keyboard.press("Enter")
    assert tab.get_by_role("alert").inner_text().startswith("That API key is not valid")
    tab.get_by_label("API key").fill(service.token)
    tab.keyboard.press("Enter")
    tab.wait_for_url("**/ui/models")  # back where the browser was sent from
    tab.keyboard.press("Tab")
    assert tab.evaluate(focused) == "Skip to content"
    tab.keyboard.press("Enter")
    assert tab.evaluate(focused) == "main"
    context.close()


def read_progress(tab) -> tuple[float, str] | None:
    try:
        return tab.evaluate("[document.getElementById('job-progress').value,"
                            " document.getElementById('job-status').textContent]")
    except Exception:  # noqa: BLE001 - the page reloads itself when the job finishes
        return None


def watch_job(tab, timeout: float = 90) -> list[float]:
    """The progress values the job page showed, until it says the job succeeded."""
    seen: list[float] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shown = read_progress(tab)
        if shown is not None:
            if not seen or seen[-1] != shown[0]:
                seen.append(shown[0])
            if shown[1] in ("succeeded", "failed", "cancelled"):
                assert shown[1] == "succeeded", f"the job {shown[1]}"
                return seen
        time.sleep(0.05)
    raise AssertionError(f"the job page never showed success; progress seen: {seen}")


def test_a_request_goes_from_scheduled_to_completed_with_a_receipt(page, service):
    from app.deletion_requests.receipts import load_public_key, verify_receipt

    model = service.models["digits-mlp"]
    # As many epochs as finetune takes, so the page usually shows progress between 0 and 1;
    # on a quiet machine the whole job can still fit between two of its 0.5 s polls.
    request = service.forget(model, 120, method="finetune", params={"epochs": 100},
                             subject="user-42")
    page.goto(f"{service.url}/ui/requests?model_id={model['id']}")
    row = page.locator(f"tr#{request['id']}")
    assert row.locator(".status").inner_text() == "scheduled"

    row.get_by_role("link", name=request["job_id"]).click()
    page.wait_for_url(f"**/ui/jobs/{request['job_id']}")
    seen = watch_job(page)
    # The page moved on its own (no reload by the test), from the queued job's 0 to 1.
    assert seen[0] == 0 and seen[-1] == 1.0 and seen == sorted(seen), seen
    page.wait_for_selector("#job[data-final='true']")
    assert "passed" in page.locator("#candidates").inner_text()
    screenshot(page, "job")

    page.goto(f"{service.url}/ui/requests?model_id={model['id']}")
    row = page.locator(f"tr#{request['id']}")
    assert row.locator(".status").inner_text() == "completed"
    with page.expect_download() as download:
        row.get_by_role("link", name="Download receipt").click()
    receipt = json.loads(Path(download.value.path()).read_text())
    assert receipt["receipt"]["request_id"] == request["id"]
    page.goto(f"{service.url}/ui/receipts")
    with page.expect_download() as key_download:
        page.get_by_role("link", name="public key").click()
    key = load_public_key(Path(key_download.value.path()).read_text())
    assert verify_receipt(receipt, key)


def test_the_lineage_marks_the_withdrawn_version(page, service):
    model = service.models["digits-mlp"]
    job = service.forget(model, classes=[3], method="finetune", params={"epochs": 3})["job_id"]
    wait_until(lambda: service.http.get(f"/v1/jobs/{job}").json()["status"] == "succeeded")
    page.goto(f"{service.url}/ui/models/{model['id']}")
    first, last = page.locator("li#v1"), page.locator("li.version").last
    assert "WITHDRAWN" in first.locator("h3").inner_text()
    assert "410 Gone" in first.inner_text()
    assert "live" in last.locator("h3").inner_text() and "latest" in last.inner_text()
    assert "Acceptance gate: PASSED" in " ".join(last.inner_text().split())
    assert page.locator("svg.plot polyline").count() == 3
    screenshot(page, "model")


def wait_until(condition, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def hold_in_backlog(request: dict) -> None:
    """As if the request waited behind a long queue past its deadline: its job may not start
    for an hour, and its deadline was yesterday."""
    from app.core.db import session_scope, utcnow
    from app.deletion_requests.tables import DeletionRequest
    from app.jobs.tables import Job

    with session_scope() as db:
        db.get(Job, request["job_id"]).not_before = utcnow() + timedelta(hours=1)
        db.get(DeletionRequest, request["id"]).deadline = utcnow() - timedelta(days=1)


def test_an_overdue_request_is_flagged_and_its_job_can_be_cancelled(page, service):
    model = service.models["backlog-mlp"]
    request = service.forget(model, 10, subject="user-7")
    hold_in_backlog(request)
    page.goto(f"{service.url}/ui/requests")
    overdue = page.get_by_role("region", name="Overdue: 1")
    flagged = overdue.locator(f"tr#{request['id']}")
    assert "OVERDUE" in flagged.inner_text() and "overdue by 1 d" in flagged.inner_text()
    screenshot(page, "requests")

    flagged.get_by_role("link", name=request["job_id"]).click()
    page.get_by_role("button", name="Cancel this job").click()
    page.wait_for_selector("#job[data-final='true']")
    assert page.locator("#job-status").inner_text() == "cancelled"
    assert "rejected" in page.get_by_role("region", name="Requests it serves").inner_text()


def test_the_audit_trail_verifies(page, service):
    page.goto(f"{service.url}/ui/audit")
    assert page.locator("td code", has_text="model.registered").count() >= 1
    page.get_by_role("button", name="Verify").click()
    page.wait_for_url("**/ui/audit/verify**")
    assert "Verified: the chain is intact" in page.get_by_role("status").inner_text()
    screenshot(page, "audit")


def test_the_benchmark_page_shows_the_plot_and_a_recommendation(page, service):
    page.goto(f"{service.url}/ui/benchmarks")
    plot = page.get_by_role("img", name="The benchmark's trade-off plot", exact=False)
    assert plot.evaluate("image => image.complete && image.naturalWidth > 0")
    assert page.locator(".recommend").count() >= 1
    screenshot(page, "benchmarks")
