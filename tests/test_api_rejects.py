"""Hostile or malformed input: a clear RFC 9457 4xx, and nothing left behind."""

from __future__ import annotations

import http.client
import io
import json
import pickle
import re
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from tests.engine.engine_helpers import png_bytes
from tests.services import served
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
    assert_problem(api.post(url, json={"sample_ids": ids, "method": "finetune",
                                       "params": {"epochs": 0}}), 422, "params.epochs")
    assert_problem(api.post(url, json={"sample_ids": ids, "method": "finetune",
                                       "params": {"bogus": 1}}), 422, "params.bogus")
    assert_problem(api.post(url, json={"sample_ids": ids, "params": {"epochs": 2}}), 422,
                   "params: name the method")
    assert_problem(api.post(url, json={"classes": [42]}), 422, "classes")
    assert_problem(api.post(url, json={"sample_ids": ids, "classes": [1]}), 422, "exactly one")
    repeated = api.post(url, json={"sample_ids": [ids[0], ids[1], ids[0], ids[1], ids[2]]})
    body = assert_problem(repeated, 422, "sample_ids", f"listed more than once: {ids[0]!r}, "
                                                      f"{ids[1]!r}")
    assert body["errors"][0]["field"] == "sample_ids"
    assert_problem(api.post(url, json={"classes": [3, 3]}), 422, "classes", "more than once")
    assert stored_state(home) == before

    assert api.post(url, json={"sample_ids": ids[:1]}).status_code == 202
    body = assert_problem(api.post(url, json={"sample_ids": ids}), 422, "already")
    assert body["already_forgotten"] == ids[:1]


def test_forgotten_and_scheduled_samples_are_refused_and_something_is_always_retained(
        api, digits_npz, digits_weights):
    dataset, model = register_digits(api, digits_npz, digits_weights)
    url = f"/v1/models/{model['id']}/deletion-requests"
    ids = sample_ids(api, model["dataset_id"], 6)
    first = api.post(url, json={"sample_ids": ids[:2], "method": "finetune", "fallback": []})
    job = api.wait_for_job(first.json()["job_id"])
    assert job["status"] == "succeeded", job
    # Forgotten by the finished job, scheduled by a queued one: both refused, by name.
    assert api.post(url, json={"sample_ids": ids[2:4], "method": "finetune"}).status_code == 202
    body = assert_problem(api.post(url, json={"sample_ids": [ids[1], ids[3], ids[5]]}), 422,
                          "already")
    assert body["already_forgotten"] == [ids[1], ids[3]]
    # Everything else, but for the rows forgotten or scheduled: nothing would be left.
    every, cursor = [], None
    while True:
        page = api.get(f"/v1/datasets/{dataset['id']}/samples",
                       params={"limit": 1000, **({"cursor": cursor} if cursor else {})}).json()
        every += [s["id"] for s in page["items"]]
        if not (cursor := page["next_cursor"]):
            break
    rest = [i for i in every if i not in ids[:4]]
    assert len(rest) == dataset["num_train"] - 4
    assert_problem(api.post(url, json={"sample_ids": rest}), 422, "nothing would be left")


def test_oversized_request_is_refused(configure, monkeypatch, digits_npz):
    from tests.conftest import api_client

    configure(max_request_bytes="1000")
    with api_client() as api:
        response = api.post("/v1/datasets", data={"name": "big"},
                            files={"file": ("d.npz", io.BytesIO(digits_npz))})
        assert_problem(response, 413)


def test_a_get_with_an_oversized_body_gets_a_documented_413(configure):
    from tests.conftest import api_client

    configure(max_request_bytes="1000")
    with api_client() as api:
        response = api.client.request("GET", "/v1/jobs", content=b"x" * 2000,
                                      headers=api.headers)
        assert_problem(response, 413)
        document = api.get("/openapi.json").json()
    assert "413" in document["paths"]["/v1/jobs"]["get"]["responses"]


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


# --- input the database would refuse, refused before any work -------------------------------

def tiny_npz(**extra) -> bytes:
    """Eight rows of three features, two classes: a dataset uploaded in milliseconds."""
    arrays = {"x_train": np.zeros((8, 3), np.float32), "y_train": np.array([0, 1] * 4),
              "x_test": np.zeros((2, 3), np.float32), "y_test": np.array([0, 1])} | extra
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_db_home(request, configure):
    """PostgreSQL refuses what SQLite stores (NUL characters, over-long text), so both."""
    if request.param == "postgres":
        return configure(database_url=request.getfixturevalue("postgres_url"))
    return configure()


@pytest.fixture
def any_db_api(any_db_home):
    from tests.conftest import api_client

    with api_client(run_worker=False) as client:
        yield client


def cursor(key: str | int) -> str:
    from app.core.pagination import encode_cursor

    return encode_cursor(key)


NO_ID = "ds_" + "0" * 24
OUT_OF_RANGE_URLS = {
    "version": f"/v1/models/{NO_ID}/versions/2147483648",
    "checkpoint version": f"/v1/models/{NO_ID}/versions/2147483648/checkpoint",
    "NUL in a path id": "/v1/models/mdl_%00",
    "NUL in a job id": "/v1/jobs/%00/cancel",
    "NUL in a query": "/v1/jobs?model_id=a%00b",
    "NUL in a subject filter": "/v1/deletion-requests?subject=%00",
    "cursor YQ": "/v1/datasets?cursor=YQ",
    "cursor not base64": "/v1/jobs?cursor=%FF%FE",
    "row cursor not a number": f"/v1/models/{NO_ID}/versions?cursor={cursor('a')}",
    "row cursor past int32": f"/v1/audit?cursor={cursor(2**31)}",
    "naive deadline cursor": "/v1/deletion-requests?cursor="
                             + cursor(f"2026-01-01T00:00:00|dr_{'0' * 24}"),
    "deadline cursor without id": "/v1/deletion-requests?cursor="
                                  + cursor("2026-01-01T00:00:00+00:00|x"),
}
OUT_OF_RANGE_FIELDS = {"version": "version", "checkpoint version": "version",
                       "NUL in a path id": "model_id", "NUL in a job id": "job_id",
                       "NUL in a query": "model_id", "NUL in a subject filter": "subject"}


def test_input_the_database_refuses_is_a_422_naming_the_field(any_db_api):
    api = any_db_api
    for case, url in OUT_OF_RANGE_URLS.items():
        method = api.post if url.endswith("/cancel") else api.get
        body = assert_problem(method(url), 422, OUT_OF_RANGE_FIELDS.get(case, "cursor"))
        assert body["errors"][0]["field"] == OUT_OF_RANGE_FIELDS.get(case, "cursor"), case
    # The bounds themselves are fine: the largest int32 is just a version that does not exist.
    assert_problem(api.get(f"/v1/models/{NO_ID}/versions/2147483647"), 404)
    assert api.get("/v1/audit", params={"cursor": cursor(2**31 - 1)}).status_code == 200
    aware = cursor(f"2026-01-01T00:00:00+05:00|dr_{'0' * 24}")
    assert api.get("/v1/deletion-requests", params={"cursor": aware}).status_code == 200


def test_labels_and_row_cursors_past_int32_on_a_real_dataset(any_db_api):
    api = any_db_api
    dataset = api.upload_dataset(tiny_npz(), "tiny.npz").json()
    url = f"/v1/datasets/{dataset['id']}/samples"
    assert_problem(api.get(url, params={"label": 2**31}), 422, "label")
    assert api.get(url, params={"label": 2**31 - 1}).json()["items"] == []
    assert_problem(api.get(url, params={"cursor": cursor(2**31)}), 422, "cursor")
    assert api.get(url, params={"cursor": cursor(2**31 - 1)}).json()["items"] == []


def test_nul_in_a_json_body_or_a_form_field_is_refused(any_db_api, any_db_home):
    api = any_db_api
    before = stored_state(any_db_home)
    url = f"/v1/models/{NO_ID}/deletion-requests"  # refused before the model is looked up
    for body, field in [({"sample_ids": ["a", "b\x00"]}, "sample_ids[1]"),
                        ({"subject": "x\x00"}, "subject"),
                        ({"classes": [1], "params": {"se\x00ed": 1}}, "params.se\x00ed")]:
        problem = assert_problem(api.post(url, json=body), 422)
        assert problem["errors"] == [{"field": field, "message": "NUL characters are not "
                                                                 "allowed"}]
    lone_surrogate = api.post(url, content=b'{"subject": "\\ud800"}',
                              headers={"Content-Type": "application/json"})
    assert_problem(lone_surrogate, 422, "subject", "lone surrogates")
    assert_problem(api.upload_dataset(tiny_npz(), "tiny.npz", name="a\x00b"), 422, "name")
    assert_problem(api.register_model("\x00", b"weights"), 422, "dataset_id")
    assert stored_state(any_db_home) == before


@pytest.mark.parametrize(("extra", "complaint"), [
    ({"ids_train": np.array([f"{i}-" + "x" * 2000 for i in range(8)])},
     "ids_train: id '0-xxx.*longer than 1024 characters"),
    ({"subjects_train": np.array(["s" * 500] * 8)}, "subjects_train: subject .*longer than 200"),
    ({"ids_train": np.array(["a", "b\x00c", "c", "d", "e", "f", "g", "h"])}, "NUL characters"),
])
def test_upload_text_the_database_cannot_hold_is_refused_before_decoding(
        any_db_api, any_db_home, extra, complaint):
    before = stored_state(any_db_home)
    response = any_db_api.upload_dataset(tiny_npz(**extra), "tiny.npz")
    body = assert_problem(response, 422)
    assert re.search(complaint, body["detail"]), body["detail"]
    assert stored_state(any_db_home) == before


def test_an_archive_member_too_long_to_be_a_sample_id_is_refused(any_db_api, any_db_home):
    members = {f"{split}/{label}/{i}.png": png_bytes() for i, (split, label)
               in enumerate([("train", "a"), ("train", "b"), ("test", "a")])}
    members["train/a/" + "x" * 2000 + ".png"] = png_bytes()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    before = stored_state(any_db_home)
    response = any_db_api.upload_dataset(buffer.getvalue(), "folder.zip")
    assert_problem(response, 422, "longer than 1024 characters")
    assert stored_state(any_db_home) == before


# --- many ordinary images, one label of 99999 ------------------------------------------------

def test_images_that_decode_past_the_cap_are_refused(configure):
    from tests.conftest import api_client

    home = configure(max_decoded_bytes="100000")
    members = {f"{split}/{'ab'[i % 2]}/{i}.png": png_bytes((64, 64))
               for i, split in enumerate(["train"] * 8 + ["test"] * 2)}  # 10 x 12,288 bytes
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with api_client(run_worker=False) as api:
        before = stored_state(home)
        response = api.upload_dataset(buffer.getvalue(), "blank.zip")
        assert_problem(response, 422, "decoded images exceed 100000 bytes")
        assert stored_state(home) == before


def test_a_huge_label_does_not_make_a_huge_number_of_classes(api, home):
    before = stored_state(home)
    labels = np.array([0, 1] * 3 + [1, 99999])
    response = api.upload_dataset(tiny_npz(y_train=labels), "tiny.npz")
    assert_problem(response, 422, "classes must be 0..K-1", "99987 more")
    assert stored_state(home) == before


# --- an oversized chunked body, on a real server ----------------------------------------------

def post_chunked(port: int, path: str, chunks: list[bytes]) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", path, body=iter(chunks), encode_chunked=True,
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def test_an_oversized_chunked_body_gets_413(configure):
    from app.main import create_app

    configure(max_request_bytes="1000")
    with served(create_app(run_worker=False)) as port:
        path = f"/v1/models/{NO_ID}/deletion-requests"
        status, body = post_chunked(port, path, [b" " * 400] * 4)  # 1,600 bytes, no length
        assert status == 413 and body["status"] == 413, body
        assert "larger than 1000 bytes" in body["detail"]
        # Under the limit the body goes through whole (to the token check, here).
        status, body = post_chunked(port, path, [b'{"classes": ', b"[1]}"])
        assert status == 401, body
