"""A real Celery worker consuming from the real Redis, with jobs in PostgreSQL."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

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
    configure(database_url=postgres_url, broker_url=REDIS_URL, queue_name=queue)
    yield {k: v for k, v in os.environ.items() if k.startswith("LETHE_")}
    import redis

    redis.Redis.from_url(REDIS_URL).delete(queue, f"{queue}\x06\x163", f"{queue}\x06\x169")


class Worker:
    def __init__(self, env: dict[str, str], log: Path):
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--concurrency", "1"],
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
                            json={"classes": [2], "method": "retrain",
                                  "params": {"epochs": 60}})
        job_id = response.json()["job_id"]
        wait_until(lambda: api.get(f"/v1/jobs/{job_id}").json()["progress"] > 0.1, 120,
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
