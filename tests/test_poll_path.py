"""The job poll's one-query path, and a pool that pings only connections left idle."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

pytestmark = pytest.mark.postgres


def _queued_job(api, digits_npz, digits_weights, samples: int) -> dict:
    dataset = api.upload_dataset(digits_npz).json()
    model = api.register_model(dataset["id"], digits_weights).json()
    ids = [str(i) for i in range(samples)]
    created = api.post(f"/v1/models/{model['id']}/deletion-requests",
                       json={"sample_ids": ids, "method": "finetune"})
    assert created.status_code == 202, created.text
    return created.json()


def test_a_poll_answers_the_job_as_the_orm_path_would_and_checks_its_key_each_time(
        configure, postgres_url, digits_npz, digits_weights):
    from app.core.db import session_scope
    from app.jobs.schemas import JobOut
    from app.jobs.tables import Job
    from app.tenants.service import revoke_api_key
    from tests.conftest import api_client

    configure(database_url=postgres_url)
    with api_client(run_worker=False) as api:
        request = _queued_job(api, digits_npz, digits_weights, samples=37)
        polled = api.get(f"/v1/jobs/{request['job_id']}")
        assert polled.status_code == 200
        with session_scope() as db:
            expected = JobOut.of(db.get(Job, request["job_id"])).model_dump(mode="json")
        assert polled.json() == expected and polled.json()["num_forget_samples"] == 37
        # Another tenant's job does not exist for this key; a bad or missing key is a 401.
        assert api.new_tenant().get(f"/v1/jobs/{request['job_id']}").status_code == 404
        assert api.get("/v1/jobs/job_nope").status_code == 404
        anonymous = api.client.get(f"/v1/jobs/{request['job_id']}")
        assert anonymous.status_code == 401
        assert anonymous.headers["WWW-Authenticate"] == "Bearer"
        assert anonymous.headers["content-type"] == "application/problem+json"
        # Revocation takes effect on the very next poll: nothing is cached.
        key_id = api.get("/v1/api-keys").json()[0]["id"]
        with session_scope() as db:
            revoke_api_key(db, key_id)
        assert api.get(f"/v1/jobs/{request['job_id']}").status_code == 401


def test_a_connection_idle_past_the_ping_interval_is_pinged_and_a_dead_one_replaced(
        postgres_url, monkeypatch):
    from sqlalchemy import create_engine

    from app.core import db as core_db

    engine = core_db.make_engine(postgres_url, pool_size=1)
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)

    def kill(pid: int) -> None:
        with admin.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

    try:
        with engine.connect() as connection:
            first_pid = connection.execute(text("SELECT pg_backend_pid()")).scalar()
        kill(first_pid)  # the server drops it (a restart, a timeout) while it sits in the pool
        # Recently used: not pinged (no round trip per checkout), so the first use fails...
        monkeypatch.setattr(core_db, "PING_AFTER_IDLE_SECONDS", 3600.0)
        with pytest.raises(OperationalError), engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        # ...but past the interval the ping finds it dead and the pool hands out a live one.
        with engine.connect() as connection:
            first_pid = connection.execute(text("SELECT pg_backend_pid()")).scalar()
        kill(first_pid)
        monkeypatch.setattr(core_db, "PING_AFTER_IDLE_SECONDS", 0.0)
        with engine.connect() as connection:
            pid = connection.execute(text("SELECT pg_backend_pid()")).scalar()
        assert pid != first_pid
    finally:
        engine.dispose()
