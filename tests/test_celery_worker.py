"""A real Celery worker consuming from the real Redis, with jobs in PostgreSQL."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from tests.conftest import api_client
from tests.services import REDIS_URL, require_redis
from tests.test_api_flow import register_digits, sample_ids

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def celery_env(configure, postgres_url):
    require_redis()
    queue = f"lethe-test-{secrets.token_hex(4)}"
    configure(database_url=postgres_url, broker_url=REDIS_URL, queue_name=queue,
              coalesce_window_seconds="1.5")
    yield {k: v for k, v in os.environ.items() if k.startswith("LETHE_")}
    import redis

    redis.Redis.from_url(REDIS_URL).delete(queue, f"{queue}\x06\x163", f"{queue}\x06\x169")


class Worker:
    def __init__(self, env: dict[str, str], log: Path, concurrency: int = 1):
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--concurrency", str(concurrency)],
            cwd=ROOT, env=os.environ | env | {"PYTHONUNBUFFERED": "1"},
            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)

    def pool_children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True,
                             text=True).stdout
        return [int(pid) for pid in out.split()]

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)


@pytest.fixture
def worker(celery_env, tmp_path):
    started = Worker(celery_env, tmp_path / "worker.log")
    yield started
    started.stop()


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_worker_runs_a_job_end_to_end(worker, digits_npz, digits_weights):
    with api_client() as api:
        _, model = register_digits(api, digits_npz, digits_weights)
        ids = sample_ids(api, model["dataset_id"], 50)
        response = api.post(f"/v1/models/{model['id']}/deletion-requests",
                            json={"sample_ids": ids, "method": "finetune",
                                  "params": {"epochs": 1}})
        job = api.wait_for_job(response.json()["job_id"], timeout=120)
        assert job["status"] == "succeeded", (job, worker.log.read_text()[-3000:])
        assert job["result_version"] == 2 and job["attempts"] == 1
        assert api.client.get("/readyz").json()["checks"]["broker"] is True


def test_killed_worker_process_job_finishes_exactly_once(worker, digits_npz, digits_weights):
    from app.audit.tables import AuditEvent
    from app.core.db import new_session
    from worker.celery_app import get_celery

    with api_client() as api:
        _, model = register_digits(api, digits_npz, digits_weights)
        response = api.post(f"/v1/models/{model['id']}/deletion-requests",
                            # Long enough (some 10 s) that the kill lands mid-job.
                            json={"classes": [2], "method": "retrain",
                                  "params": {"epochs": 250}})
        job_id = response.json()["job_id"]
        wait_until(lambda: api.get(f"/v1/jobs/{job_id}").json()["progress"] > 0.05, 120,
                   "the job to make progress")
        children = worker.pool_children()
        assert children, "the worker has no pool process"
        for pid in children:
            os.kill(pid, signal.SIGKILL)  # the process running the job dies mid-step

        job = api.wait_for_job(job_id, timeout=240)
        assert job["status"] == "succeeded", (job, worker.log.read_text()[-3000:])
        assert job["attempts"] == 2
        versions = api.get(f"/v1/models/{model['id']}/versions").json()["items"]
        assert [v["version"] for v in versions] == [1, 2]

        # A stray duplicate of the message must not run the finished job again.
        get_celery().send_task("lethe.run_job", args=[job_id],
                               queue=os.environ["LETHE_QUEUE_NAME"])
        time.sleep(3)
        assert api.get(f"/v1/jobs/{job_id}").json() == job
        with new_session() as db:
            created = db.scalars(select(AuditEvent).where(
                AuditEvent.action == "model_version.created",
                AuditEvent.subject_id == model["id"])).all()
        assert len(created) == 1


def test_a_burst_of_requests_is_coalesced_and_fully_evidenced(worker, digits_npz,
                                                              digits_weights, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from fastapi.testclient import TestClient
    from sqlalchemy import text
    from typer.testing import CliRunner

    from app.cli import cli
    from app.core.db import session_scope
    from app.core.storage import get_blob_store
    from app.datasets.tables import Dataset
    from app.main import create_app
    from tests.test_deletion_lifecycle import digits_with_subjects, wait_for_request

    with api_client() as api:
        # Subjects unique to this test make its blobs unique: identical uploads of other tests
        # share content-addressed blobs that must (rightly) survive this erasure.
        unique = digits_with_subjects(digits_npz, prefix=secrets.token_hex(4))
        dataset, model = register_digits(api, unique, digits_weights)
        ids = sample_ids(api, dataset["id"], 120)
        with session_scope() as db:
            original_blobs = (db.get(Dataset, dataset["id"]).upload_blob,
                              db.get(Dataset, dataset["id"]).arrays_blob)

        def ask(chunk: list[str]) -> dict:
            with TestClient(create_app(run_worker=False)) as client:
                response = client.post(
                    f"/v1/models/{model['id']}/deletion-requests", headers=api.headers,
                    json={"sample_ids": chunk, "method": "finetune", "params": {"epochs": 1}})
            assert response.status_code == 202, response.text
            return response.json()

        with ThreadPoolExecutor(max_workers=8) as pool:
            made = list(pool.map(ask, [ids[i : i + 3] for i in range(0, 120, 3)]))

        finished = [wait_for_request(api, r["id"], timeout=240) for r in made]
        assert all(r["status"] == "completed" for r in finished), finished
        jobs = {r["job_id"] for r in finished}
        assert len(jobs) <= 5, f"40 requests became {len(jobs)} jobs"
        versions = api.get(f"/v1/models/{model['id']}/versions").json()["items"]
        assert len(versions) == len(jobs) + 1
        for old in versions[:-1]:
            response = api.get(f"/v1/models/{model['id']}/versions/{old['version']}/checkpoint")
            assert response.status_code == 410
        latest = api.get(f"/v1/models/{model['id']}/versions/{versions[-1]['version']}/checkpoint")
        assert latest.status_code == 200

        key = tmp_path / "key.json"
        key.write_text(json.dumps(api.get("/v1/keys/receipt").json()))
        for request in finished[:: 8]:
            receipt = tmp_path / f"{request['id']}.json"
            receipt.write_text(api.get(f"/v1/deletion-requests/{request['id']}/receipt").text)
            verdict = CliRunner().invoke(cli, ["receipt", "verify", str(receipt),
                                               "--public-key", str(key)])
            assert verdict.exit_code == 0, verdict.output

        wait_until(lambda: all(s["erased"] for s in api.get(
            f"/v1/datasets/{dataset['id']}/samples", params={"limit": 120}).json()["items"]),
            60, "the forgotten samples' bytes to be erased")
        store = get_blob_store()
        assert not any(store.exists(blob) for blob in original_blobs)
        with session_scope() as db:
            upload = store.path(db.get(Dataset, dataset["id"]).upload_blob)
        with np.load(upload, allow_pickle=False) as npz:
            assert not set(npz["ids_train"].tolist()) & set(ids)

        assert api.get("/v1/audit/verify").json()["valid"] is True
        events = api.get("/v1/audit", params={"limit": 1000}).json()["items"]
        victim = next(e for e in events if e["action"] == "deletion_request.completed")
        with session_scope() as db:
            db.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = :seq"),
                       {"seq": victim["seq"]})
        # Changed in place, its stored hash kept: the worker's upkeep may have signed a
        # checkpoint past it meanwhile, which incremental verification trusts; a full one
        # re-hashes every event.
        full = api.get("/v1/audit/verify", params={"full": "true"}).json()
        assert full["first_invalid_seq"] == victim["seq"]
        with session_scope() as db:  # the database is shared with later tests: undo it
            db.execute(text("UPDATE audit_events SET actor = :actor WHERE seq = :seq"),
                       {"actor": victim["actor"], "seq": victim["seq"]})
        assert api.get("/v1/audit/verify").json()["valid"] is True


def test_core_methods_run_on_the_celery_worker(worker, digits_npz, digits_weights):
    from tests.methods_fixtures import DIGITS_PARAMS

    with api_client() as api:
        _, model = register_digits(api, digits_npz, digits_weights)
        for version, (method, params) in enumerate(DIGITS_PARAMS.items(), start=2):
            response = api.post(f"/v1/models/{model['id']}/deletion-requests",
                                json={"classes": [version], "method": method, "params": params})
            job = api.wait_for_job(response.json()["job_id"], timeout=180)
            assert job["status"] == "succeeded", (job, worker.log.read_text()[-3000:])
            assert (job["base_version"], job["result_version"]) == (version - 1, version)
            assert job["metrics"]["forget_accuracy"] < 0.05


def _burst_plan(busy: str, others: list[str], ids: list[str], busy_count: int,
                each_other: int) -> list[tuple[str, str]]:
    """One sample id per request: ``busy_count`` for the busy model, ``each_other`` for each
    other model, shuffled together."""
    import random

    plan = [(busy, ids.pop()) for _ in range(busy_count)]
    plan += [(model, ids.pop()) for model in others for _ in range(each_other)]
    random.Random(len(ids)).shuffle(plan)
    return plan


def _fire(plan: list[tuple[str, str]], headers: dict) -> list[tuple[int, dict]]:
    """Send the plan's requests from 32 threads, each through its own client."""
    from concurrent.futures import ThreadPoolExecutor

    from fastapi.testclient import TestClient

    from app.main import create_app

    def ask(item: tuple[str, str]) -> tuple[int, dict]:
        model_id, sample_id = item
        with TestClient(create_app(run_worker=False)) as client:
            response = client.post(
                f"/v1/models/{model_id}/deletion-requests", headers=headers,
                json={"sample_ids": [sample_id], "method": "finetune",
                      "params": {"epochs": 1}, "fallback": []})
        return response.status_code, response.json()

    with ThreadPoolExecutor(max_workers=32) as pool:
        return list(pool.map(ask, plan))


def test_a_burst_over_many_models_loses_nothing_and_stalls_no_model(celery_env, digits_npz,
                                                                    digits_weights, tmp_path):
    """200 requests from 32 threads over 4 models, most for one: each is recorded and served,
    none gets a 5xx, requests that join a waiting job add no message, and while the worker
    runs, the other models' jobs start within seconds of the busy one's."""
    import redis

    from tests.test_deletion_lifecycle import wait_for_request

    with api_client() as api:
        dataset, busy = register_digits(api, digits_npz, digits_weights)
        others = [api.register_model(dataset["id"], digits_weights).json()["id"]
                  for _ in range(3)]
        ids = sample_ids(api, dataset["id"], 200)
        queued = _fire(_burst_plan(busy["id"], others, ids, 80, 20), api.headers)
        assert [status for status, _ in queued] == [202] * 140, queued
        jobs = {body["job_id"] for _, body in queued}
        queue = os.environ["LETHE_QUEUE_NAME"]
        assert redis.Redis.from_url(REDIS_URL).llen(queue) == len(jobs)  # one message a job

        worker = Worker(celery_env, tmp_path / "worker.log", concurrency=2)
        started = time.monotonic()
        try:
            live = _fire(_burst_plan(busy["id"], others, ids, 30, 10), api.headers)
            finished = [wait_for_request(api, body["id"], timeout=240)
                        for _, body in queued + live]
        finally:
            worker.stop()
        assert [status for status, _ in live] == [202] * 60, live
        failures = [(r["status"], r["error"]) for r in finished if r["status"] != "completed"]
        assert not failures, failures[:3]
        spread = _first_start_spread(api, {body["job_id"] for _, body in live})
        assert spread < 30  # no model waited for the busy one's burst
        print(f"burst: 200 requests ({len(jobs)} messages for the {len(queued)} queued), 0 "
              f"lost, 0 5xx; live, the 4 models' first jobs started within {spread:.1f} s; all "
              f"served {time.monotonic() - started:.0f} s after the worker started")
        assert "Deadlock" not in worker.log.read_text()


def _first_start_spread(api, job_ids: set[str]) -> float:
    """Seconds between the first and the last model to have a job of ``job_ids`` started."""
    starts: dict[str, list[str]] = {}
    for job_id in job_ids:
        job = api.get(f"/v1/jobs/{job_id}").json()
        starts.setdefault(job["model_id"], []).append(job["started_at"])
    first = sorted(datetime.fromisoformat(min(times)) for times in starts.values())
    return (first[-1] - first[0]).total_seconds()
