"""Hostile or malformed input: a clear RFC 9457 4xx, and nothing left behind."""

from __future__ import annotations

import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.test_api_flow import register_digits, sample_ids


def stored_state(home: Path) -> tuple[list[str], dict[str, int]]:
    """Every blob file (staging included) and the row count of every table."""
    from app.core.db import new_session
    from app.tables import Base

    blobs = sorted(str(p.relative_to(home)) for p in (home / "blobs").rglob("*") if p.is_file())
    with new_session() as db:
        counts = {name: db.scalar(select(func.count()).select_from(table))
                  for name, table in Base.metadata.tables.items()}
    return blobs, counts


@pytest.fixture
def home(configure, request):
    return configure()


@pytest.fixture
def api(home):
    from tests.conftest import api_client

    with api_client() as client:
        yield client


def assert_problem(response, status: int, *fragments: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert {"type", "title", "status", "detail"} <= set(body) and body["status"] == status
    for fragment in fragments:
        assert fragment in body["detail"], body["detail"]
    return body


def evil_tar(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.addfile(member, io.BytesIO(data) if data else None)
    return buffer.getvalue()


def traversal_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../../etc/evil.png", b"x")
    return buffer.getvalue()


def symlink_tar() -> bytes:
    link = tarfile.TarInfo("train/cat/passwd.png")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return evil_tar(link)


BAD_DATASETS = {
    "traversal": ("d.zip", traversal_zip(), "..", 422),
    "symlink": ("d.tar", symlink_tar(), "passwd", 422),
    "pickle in npz": ("d.npz", pickle.dumps({"x_train": [1]}), "", 422),
    "unknown format": ("d.csv", b"a,b\n1,2\n", "", 422),
}


@pytest.mark.parametrize("case", list(BAD_DATASETS))
def test_bad_dataset_uploads_leave_nothing(api, home, case):
    filename, content, fragment, status = BAD_DATASETS[case]
    before = stored_state(home)
    response = api.post("/v1/datasets", data={"name": "evil"},
                        files={"file": (filename, io.BytesIO(content))})
    assert_problem(response, status, fragment)
    assert stored_state(home) == before


class Exploding:
    def __reduce__(self):
        return (Path("/tmp/lethe-pwned").touch, ())


def test_pickled_weights_are_rejected_unopened(api, home, digits_npz):
    dataset = api.upload_dataset(digits_npz).json()
    before = stored_state(home)
    marker = Path("/tmp/lethe-pwned")
    marker.unlink(missing_ok=True)
    response = api.register_model(dataset["id"], pickle.dumps(Exploding()))
    assert_problem(response, 422, "safetensors")
    assert not marker.exists()
    assert stored_state(home) == before


def test_weights_must_match_the_architecture(api, home, digits_npz, digits_weights):
    dataset = api.upload_dataset(digits_npz).json()
    before = stored_state(home)
    wrong_width = api.register_model(dataset["id"], digits_weights, config='{"hidden": [32]}')
    body = assert_problem(wrong_width, 422, "features.1.weight")
    assert body["wrong_shapes"]
    wrong_arch = api.register_model(dataset["id"], digits_weights, architecture="allcnn",
                                    config=None)
    assert_problem(wrong_arch, 422, "missing tensors")
    unknown = api.register_model(dataset["id"], digits_weights, architecture="transformer-xl")
    assert_problem(unknown, 422, "architecture")
    bad_json = api.register_model(dataset["id"], digits_weights, config="{not json")
    assert_problem(bad_json, 422, "architecture_config")
    bad_recipe = api.register_model(dataset["id"], digits_weights,
                                    training_config='{"epochs": -1}')
    assert_problem(bad_recipe, 422, "training_config.epochs")
    assert stored_state(home) == before


def test_bad_deletion_requests_change_nothing(api, home, digits_npz, digits_weights):
    _, model = register_digits(api, digits_npz, digits_weights)
    url = f"/v1/models/{model['id']}/deletion-requests"
    ids = sample_ids(api, model["dataset_id"], 3)
    before = stored_state(home)
    body = assert_problem(api.post(url, json={"sample_ids": [*ids, "no-such-sample"]}), 422,
                          "no-such-sample")
    assert body["unknown_sample_ids"] == ["no-such-sample"]
    assert_problem(api.post(url, json={"sample_ids": ids, "method": "oblivion"}), 422,
                   "method", "oblivion")
    assert_problem(api.post(url, json={"sample_ids": ids, "params": {"epochs": 0}}), 422,
                   "params.epochs")
    assert_problem(api.post(url, json={"sample_ids": ids, "params": {"bogus": 1}}), 422,
                   "params.bogus")
    assert_problem(api.post(url, json={"classes": [42]}), 422, "classes")
    assert_problem(api.post(url, json={"sample_ids": ids, "classes": [1]}), 422, "exactly one")
    assert stored_state(home) == before

    assert api.post(url, json={"sample_ids": ids[:1]}).status_code == 202
    body = assert_problem(api.post(url, json={"sample_ids": ids}), 422, "already")
    assert body["already_forgotten"] == ids[:1]


def test_oversized_request_is_refused(configure, monkeypatch, digits_npz):
    from tests.conftest import api_client

    configure(max_request_bytes="1000")
    with api_client() as api:
        response = api.post("/v1/datasets", data={"name": "big"},
                            files={"file": ("d.npz", io.BytesIO(digits_npz))})
        assert_problem(response, 413)


def test_every_v1_route_needs_a_token(api):
    from app.main import create_app

    for route in create_app(run_worker=False).routes:
        path = getattr(route, "path", "")
        if not path.startswith("/v1"):
            continue
        for method in route.methods - {"HEAD", "OPTIONS"}:
            url = path.replace("{", "").replace("}", "")
            response = api.client.request(method, url)
            assert_problem(response, 401)
            assert response.headers["www-authenticate"] == "Bearer"
            wrong = api.client.request(method, url, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401


def test_other_tenants_resources_answer_404(api, digits_npz, digits_weights):
    dataset, model = register_digits(api, digits_npz, digits_weights)
    stranger = api.new_tenant()
    for url in (f"/v1/datasets/{dataset['id']}", f"/v1/models/{model['id']}",
                f"/v1/models/{model['id']}/versions/1/checkpoint",
                f"/v1/datasets/{dataset['id']}/samples"):
        assert_problem(stranger.get(url), 404)
    assert stranger.get("/v1/datasets").json()["items"] == []
    ids = sample_ids(api, dataset["id"], 2)
    assert_problem(stranger.post(f"/v1/models/{model['id']}/deletion-requests",
                                 json={"sample_ids": ids}), 404)
    foreign = stranger.register_model(dataset["id"], digits_weights)
    assert_problem(foreign, 422, "dataset_id")
