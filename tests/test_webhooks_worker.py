"""On PostgreSQL, Redis and a real Celery worker: a delivery is a Celery task that retries
itself (Celery's own retry, with the delivery's backoff) until the receiver takes it."""

from __future__ import annotations

import os
import secrets

import pytest

from tests.conftest import live_server_at
from tests.services import REDIS_URL, require_redis
from tests.test_celery_worker import Worker
from tests.test_client import MLP
from tests.test_webhooks import Receiver, settled

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def webhook_worker(configure, postgres_url, tmp_path):
    require_redis()
    queue = f"lethe-test-{secrets.token_hex(4)}"
    configure(database_url=postgres_url, broker_url=REDIS_URL, queue_name=queue,
              webhook_allow_private="true", webhook_backoff_seconds="0.5")
    started = Worker({k: v for k, v in os.environ.items() if k.startswith("LETHE_")},
                     tmp_path / "worker.log")
    yield started
    started.stop()
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    if keys := client.keys(f"{queue}*"):
        client.delete(*keys)


def test_the_celery_worker_delivers_and_retries(webhook_worker, tmp_path, digits_npz,
                                                digits_weights):
    from lethe_client.webhooks import verify

    (tmp_path / "digits.npz").write_bytes(digits_npz)
    (tmp_path / "mlp.safetensors").write_bytes(digits_weights)
    with Receiver(statuses=[503]) as receiver, live_server_at() as server, \
            server.client() as lethe:
        hook = lethe.webhooks.create(receiver.url, ["model_version.created"])
        dataset = lethe.datasets.upload(tmp_path / "digits.npz")
        model = lethe.models.register(tmp_path / "mlp.safetensors", dataset=dataset, **MLP)
        ids = [s.id for s in lethe.datasets.samples(dataset, limit=20)]
        lethe.forget(model, sample_ids=ids, method="finetune",
                     params={"epochs": 1}).wait(timeout=120)
        receiver.wait_for(lambda r: r.accepted(), timeout=60)
        headers, body = receiver.accepted()[0]
        assert verify(hook.secret, headers, body)["data"]["version"] == 2
        delivery = settled(lethe, hook.id, headers["webhook-id"])
        assert delivery.status == "delivered", webhook_worker.log.read_text()[-3000:]
        assert [a.status_code for a in delivery.attempt_log] == [503, 200]
        assert "lethe.deliver_webhook" in webhook_worker.log.read_text()
