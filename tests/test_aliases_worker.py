"""On PostgreSQL, Redis and a real Celery worker: the worker's commit of a new version moves
the aliases of the versions it withdraws, in the same transaction, and the client, on a real
port, follows them."""

from __future__ import annotations

import pytest

from tests.conftest import live_server_at
from tests.test_celery_worker import celery_env, worker  # noqa: F401 - fixtures
from tests.test_client import MLP

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


def test_the_celery_worker_moves_aliases_off_withdrawn_versions(worker, tmp_path,  # noqa: F811
                                                                digits_npz, digits_weights):
    (tmp_path / "digits.npz").write_bytes(digits_npz)
    (tmp_path / "mlp.safetensors").write_bytes(digits_weights)
    with live_server_at() as server, server.client() as lethe:
        dataset = lethe.datasets.upload(tmp_path / "digits.npz")
        model = lethe.models.register(tmp_path / "mlp.safetensors", dataset=dataset, **MLP)
        lethe.models.set_alias(model, "production", 1)
        ids = [s.id for s in lethe.datasets.samples(dataset, limit=30)]
        done = lethe.forget(model, sample_ids=ids, method="finetune",
                            params={"epochs": 1}).wait(timeout=120)
        assert done.version_after == 2, worker.log.read_text()[-3000:]
        assert lethe.models.get_alias(model, "production").version == 2
        assert lethe.versions.get(model, 1).withdrawn_at is not None
        moved = [e.data for e in lethe.audit.events() if e.action == "model_alias.moved"]
        assert moved == [{"alias": "production", "from_version": 1, "to_version": 2,
                          "reason": "version withdrawn"}]
        path = lethe.versions.download(model, "production", tmp_path / "prod.safetensors")
        assert path.stat().st_size == lethe.versions.get(model, 2).size_bytes
