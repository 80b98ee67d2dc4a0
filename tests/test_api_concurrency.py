"""The embedded default under many concurrent clients: no request waits on the pool."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import api_client
from tests.services import served
from tests.test_api_flow import register_digits, sample_ids

CLIENTS, POLLS = 64, 5


def poll(port: int, path: str, headers: dict) -> list[tuple[int, float]]:
    answers = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers,
                      timeout=60) as client:
        for _ in range(POLLS):
            started = time.monotonic()
            status = client.get(path).status_code
            answers.append((status, time.monotonic() - started))
    return answers


@pytest.mark.slow
def test_64_clients_polling_one_job_on_sqlite_never_wait_for_the_pool(configure, digits_npz,
                                                                      digits_weights):
    from app.main import create_app

    configure()
    with api_client(run_worker=False) as api:
        _, model = register_digits(api, digits_npz, digits_weights)
        job_id = api.post(f"/v1/models/{model['id']}/deletion-requests",
                          json={"sample_ids": sample_ids(api, model["dataset_id"], 3)}
                          ).json()["job_id"]
        headers = api.headers
    with served(create_app(run_worker=False), lifespan="on") as port, \
            ThreadPoolExecutor(CLIENTS) as pool:
        results = [answer for answers in pool.map(
            lambda _: poll(port, f"/v1/jobs/{job_id}", headers), range(CLIENTS))
            for answer in answers]
    assert [status for status, _ in results] == [200] * CLIENTS * POLLS
    # A request stuck behind the pool waits out its 30 s timeout; none may come near it.
    assert max(seconds for _, seconds in results) < 10
