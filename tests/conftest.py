"""Fixtures shared by the service tests: configured environments, API clients, trained models."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from safetensors.torch import save

from tests.services import fresh_postgres_database, served

TEST_ENV = {
    "LETHE_JOB_LEASE_SECONDS": "4",
    "LETHE_BUSY_RETRY_SECONDS": "0.5",
    "LETHE_TORCH_THREADS": "1",
    "LETHE_LOCAL_WORKERS": "2",
    "LETHE_COALESCE_WINDOW_SECONDS": "0",
    "LETHE_SWEEP_INTERVAL_SECONDS": "2",
}


def reset_caches() -> None:
    from app.core import db, storage
    from app.deletion_requests import receipts
    from worker import celery_app, execution, model_inputs

    db.reset_caches()
    receipts.signing_key.cache_clear()
    storage.get_blob_store.cache_clear()
    celery_app.get_celery.cache_clear()
    execution.model_inputs.cache_clear()
    model_inputs.text_inputs.cache_clear()
    model_inputs.preprocessed_image_inputs.cache_clear()


def point_lethe_at(monkeypatch: pytest.MonkeyPatch, home: Path, **settings: str | None) -> Path:
    """Lethe's settings for a fresh ``home`` (plus ``settings``), its database migrated."""
    monkeypatch.setenv("LETHE_HOME", str(home))
    for name in ("DATABASE_URL", "BROKER_URL", "STORAGE_URL"):
        monkeypatch.delenv(f"LETHE_{name}", raising=False)
    for name, value in TEST_ENV.items():
        monkeypatch.setenv(name, value)
    for name, value in settings.items():
        if value is not None:
            monkeypatch.setenv(f"LETHE_{name.upper()}", str(value))
    reset_caches()
    from app.core import migrate

    migrate.upgrade()
    return home


@pytest.fixture
def configure(monkeypatch, tmp_path) -> Iterator:
    """``configure(database_url=..., broker_url=...)`` points Lethe at a fresh home."""

    def apply(**settings: str | None) -> Path:
        return point_lethe_at(monkeypatch, tmp_path / "home", **settings)

    yield apply
    reset_caches()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


class Api:
    """A TestClient bound to one tenant's token."""

    def __init__(self, client: TestClient, token: str):
        self.client, self.token = client, token
        self.headers = {"Authorization": f"Bearer {token}"}

    def __getattr__(self, verb):
        def call(url, **kwargs):
            headers = self.headers | kwargs.pop("headers", {})
            return getattr(self.client, verb)(url, headers=headers, **kwargs)

        return call

    def new_tenant(self) -> Api:
        return Api(self.client, create_token("other"))

    def upload_dataset(self, content: bytes, filename: str = "digits.npz", name: str = "digits"):
        return self.post("/v1/datasets", data={"name": name},
                         files={"file": (filename, io.BytesIO(content))})

    def register_model(self, dataset_id: str, weights: bytes, architecture: str = "mlp",
                       config: str | None = '{"hidden": [64]}', **fields):
        data = {"name": "clf", "architecture": architecture, "dataset_id": dataset_id, **fields}
        if config is not None:
            data["architecture_config"] = config
        return self.post("/v1/models", data=data,
                         files={"weights": ("w.safetensors", io.BytesIO(weights))})

    def wait_for_job(self, job_id: str, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} still {job['status']} after {timeout}s: {job}")


def create_token(name: str = "tests") -> str:
    from app.core.db import session_scope
    from app.tenants.service import create_api_key

    with session_scope() as db:
        return create_api_key(db, name)[1]


@contextmanager
def api_client(run_worker: bool = True) -> Iterator[Api]:
    from app.main import create_app

    with TestClient(create_app(run_worker=run_worker)) as client:
        yield Api(client, create_token())


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def api(request, configure) -> Iterator[Api]:
    """The API with its in-process worker, on SQLite and on PostgreSQL."""
    if request.param == "postgres":
        configure(database_url=request.getfixturevalue("postgres_url"))
    else:
        configure()
    with api_client() as client:
        yield client


@pytest.fixture
def sqlite_api(configure) -> Iterator[Api]:
    configure()
    with api_client() as client:
        yield client


class LiveServer:
    """The app behind a real uvicorn on a free port, with its in-process worker."""

    def __init__(self, port: int, token: str):
        self.port, self.token = port, token
        self.url = f"http://127.0.0.1:{port}"

    def client(self, **options):
        from lethe_client import Client

        return Client(**({"url": self.url, "token": self.token, "backoff": 0.01,
                          "poll_interval": 0.2, "progress": False} | options))


@contextmanager
def live_server_at() -> Iterator[LiveServer]:
    from app.main import create_app

    with served(create_app(), lifespan="on") as port:
        yield LiveServer(port, create_token())


@pytest.fixture
def live_server(configure) -> Iterator[LiveServer]:
    configure()
    with live_server_at() as server:
        yield server


@pytest.fixture(scope="session")
def digits_npz(tmp_path_factory) -> bytes:
    from worker.engine.data.formats import export_digits

    path = tmp_path_factory.mktemp("data") / "digits.npz"
    export_digits(path)
    return path.read_bytes()


@pytest.fixture(scope="session")
def digits_weights(tmp_path_factory, digits_npz) -> bytes:
    """An MLP(64) trained on the digits export: safetensors bytes, as a user would upload."""
    import torch

    from worker.engine.architectures import build_model
    from worker.engine.data.formats import ArchiveLimits, load_dataset_file
    from worker.engine.training import TrainingRecipe, train

    path = tmp_path_factory.mktemp("train") / "digits.npz"
    path.write_bytes(digits_npz)
    arrays = load_dataset_file(path, "digits.npz", ArchiveLimits())
    torch.manual_seed(0)
    model = build_model("mlp", {"num_classes": 10, "input_shape": arrays.input_shape,
                                "hidden": [64]})
    recipe = TrainingRecipe(epochs=15, lr=0.05, batch_size=64)
    train(model, arrays.inputs(arrays.x_train), torch.from_numpy(arrays.y_train), recipe,
          torch.device("cpu"))
    return save({k: v.contiguous() for k, v in model.state_dict().items()})
