"""The path a user takes, end to end through the HTTP API and the in-process worker."""

from __future__ import annotations

import hashlib

import pytest
from safetensors.torch import load


def register_digits(api, digits_npz, digits_weights, **model_fields):
    dataset = api.upload_dataset(digits_npz)
    assert dataset.status_code == 201, dataset.text
    model = api.register_model(dataset.json()["id"], digits_weights, **model_fields)
    assert model.status_code == 201, model.text
    return dataset.json(), model.json()


def sample_ids(api, dataset_id, limit):
    page = api.get(f"/v1/datasets/{dataset_id}/samples", params={"limit": limit}).json()
    return [s["id"] for s in page["items"]]


@pytest.mark.slow
def test_delete_samples_end_to_end(api, digits_npz, digits_weights):
    dataset, model = register_digits(api, digits_npz, digits_weights)
    assert dataset["num_classes"] == 10 and dataset["input_shape"] == [1, 8, 8]
    assert dataset["sha256"] == hashlib.sha256(digits_npz).hexdigest()
    assert model["latest_version"] == 1
    forget = sample_ids(api, dataset["id"], 100)

    response = api.post(f"/v1/models/{model['id']}/deletion-requests",
                        json={"sample_ids": forget, "method": "finetune",
                              "params": {"epochs": 2}, "subject": "user-42"})
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/v1/jobs/{response.json()['job_id']}"
    job = api.wait_for_job(response.json()["job_id"])

    assert job["status"] == "succeeded", job
    assert job["base_version"] == 1 and job["result_version"] == 2
    metrics = job["metrics"]
    for key in ("forget_accuracy", "retain_accuracy", "test_accuracy", "mia_efficacy"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["retain_accuracy"] > 0.9 and metrics["duration_s"] > 0

    versions = api.get(f"/v1/models/{model['id']}/versions").json()["items"]
    assert [v["version"] for v in versions] == [1, 2]
    assert versions[1]["parent_version"] == 1 and versions[1]["job_id"] == job["id"]
    assert versions[1]["forgotten_samples"] == len(forget)
    forgotten, cursor = [], None
    while True:  # the listing, in pages
        page = api.get(f"/v1/models/{model['id']}/versions/2/forgotten-samples",
                       params={"limit": 30} | ({"cursor": cursor} if cursor else {})).json()
        forgotten += [s["id"] for s in page["items"]]
        if not (cursor := page["next_cursor"]):
            break
    assert forgotten == sorted(forget)
    assert api.get(f"/v1/models/{model['id']}").json()["latest_version"] == 2

    download = api.get(f"/v1/models/{model['id']}/versions/2/checkpoint")
    assert download.status_code == 200
    digest = hashlib.sha256(download.content).hexdigest()
    assert download.headers["etag"] == f'"{digest}"' and digest == versions[1]["sha256"]
    assert set(load(download.content)) == set(load(digits_weights))

    request = api.get(f"/v1/deletion-requests/{response.json()['id']}").json()
    assert request["status"] == "completed" and request["completed_at"]
    samples = api.get(f"/v1/datasets/{dataset['id']}/samples", params={"limit": 100}).json()
    assert all(s["deleted"] for s in samples["items"])


def test_checkpoint_ranges(sqlite_api, digits_npz, digits_weights):
    _, model = register_digits(sqlite_api, digits_npz, digits_weights)
    url = f"/v1/models/{model['id']}/versions/1/checkpoint"
    full = sqlite_api.get(url)
    assert full.content == digits_weights
    part = sqlite_api.get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == digits_weights[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(digits_weights)}"
    tail = sqlite_api.get(url, headers={"Range": "bytes=-5"})
    assert tail.status_code == 206 and tail.content == digits_weights[-5:]
    beyond = sqlite_api.get(url, headers={"Range": f"bytes={len(digits_weights)}-"})
    assert beyond.status_code == 416
    cached = sqlite_api.get(url, headers={"If-None-Match": full.headers["etag"]})
    assert cached.status_code == 304


@pytest.mark.slow
def test_forget_a_class_then_chain_versions(sqlite_api, digits_npz, digits_weights):
    api = sqlite_api
    _, model = register_digits(api, digits_npz, digits_weights)
    first = api.post(f"/v1/models/{model['id']}/deletion-requests",
                     json={"classes": [3], "method": "retrain", "params": {"epochs": 10}})
    second = api.post(f"/v1/models/{model['id']}/deletion-requests",
                      json={"classes": [5], "method": "finetune", "params": {"epochs": 2}})
    assert first.status_code == second.status_code == 202
    job1 = api.wait_for_job(first.json()["job_id"])
    job2 = api.wait_for_job(second.json()["job_id"])
    assert job1["status"] == job2["status"] == "succeeded"
    # One model's jobs run one after another, each on the latest version.
    assert (job1["base_version"], job1["result_version"]) == (1, 2)
    assert (job2["base_version"], job2["result_version"]) == (2, 3)
    assert job1["metrics"]["forget_accuracy"] < 0.05
    assert job1["metrics"]["retain_accuracy"] > 0.9


@pytest.mark.slow
def test_a_request_naming_no_method_gets_the_chain_for_its_kind(sqlite_api, digits_npz,
                                                                 digits_weights):
    # The chains whose methods the zoo's gate published most often at defaults (README).
    api = sqlite_api
    defaults = {m["name"]: m["default_for"] for m in api.get("/v1/methods").json()}
    assert defaults["projected-gradient"] == ["samples", "classes"]
    assert defaults["deepclean"] == []
    assert defaults["random-label"] == []
    chains = api.get("/v1/acceptance-gate").json()["default_chains"]
    assert chains == {"samples": ["projected-gradient", "feature-constraint", "retrain"],
                      "classes": ["projected-gradient", "deepclean", "retrain"]}
    _, model = register_digits(api, digits_npz, digits_weights)
    response = api.post(f"/v1/models/{model['id']}/deletion-requests", json={"classes": [7]})
    assert response.status_code == 202, response.text
    request = response.json()
    assert request["method"] == "projected-gradient"
    assert [step["method"] for step in request["fallback"]] == ["deepclean", "retrain"]
    job = api.wait_for_job(request["job_id"])
    assert job["status"] == "succeeded" and job["method"] == "projected-gradient", job
    assert job["metrics"]["method"] == "projected-gradient"  # published without falling back
    assert job["metrics"]["forget_accuracy"] < 0.05
    assert job["metrics"]["retain_accuracy"] > 0.9

    page = api.get(f"/v1/datasets/{model['dataset_id']}/samples", params={"limit": 40}).json()
    others = [s["id"] for s in page["items"] if s["label"] != 7]
    deletions = f"/v1/models/{model['id']}/deletion-requests"
    # params are a named method's: the default depends on the request's kind.
    refused = api.post(deletions, json={"sample_ids": others[:20], "params": {"seed": 1}})
    assert refused.status_code == 422 and "name the method" in refused.text, refused.text
    response = api.post(deletions, json={"sample_ids": others[:20]})
    assert response.status_code == 202, response.text
    request = response.json()
    assert request["method"] == "projected-gradient"
    assert [step["method"] for step in request["fallback"]] == ["feature-constraint", "retrain"]
    # A fallback the request names replaces the rest of the chain.
    response = api.post(deletions, json={"sample_ids": others[20:30], "fallback": []})
    assert response.status_code == 202, response.text
    assert (response.json()["method"], response.json()["fallback"]) == ("projected-gradient", [])


def test_an_unknown_configured_default_method_stops_the_service_starting(configure):
    from app.main import create_app

    configure(default_chain_classes='["projected-gradient", "no-such-method"]')
    with pytest.raises(RuntimeError, match="LETHE_DEFAULT_CHAIN_CLASSES: unknown method"):
        create_app(run_worker=False)


def test_cancel_queued_job(configure, digits_npz, digits_weights):
    from tests.conftest import api_client

    configure()
    with api_client(run_worker=False) as api:
        _, model = register_digits(api, digits_npz, digits_weights)
        ids = sample_ids(api, model["dataset_id"], 5)
        job_id = api.post(f"/v1/models/{model['id']}/deletion-requests",
                          json={"sample_ids": ids}).json()["job_id"]
        cancelled = api.post(f"/v1/jobs/{job_id}/cancel")
        assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
        assert api.post(f"/v1/jobs/{job_id}/cancel").status_code == 409
        # The samples of a cancelled request can be asked for again.
        again = api.post(f"/v1/models/{model['id']}/deletion-requests", json={"sample_ids": ids})
        assert again.status_code == 202


@pytest.mark.slow
def test_cancel_running_job(sqlite_api, digits_npz, digits_weights):
    import time

    api = sqlite_api
    _, model = register_digits(api, digits_npz, digits_weights)
    job_id = api.post(f"/v1/models/{model['id']}/deletion-requests",
                      json={"classes": [1], "method": "retrain",
                            "params": {"epochs": 1000}}).json()["job_id"]
    for _ in range(300):
        if api.get(f"/v1/jobs/{job_id}").json()["status"] == "running":
            break
        time.sleep(0.1)
    assert api.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    job = api.wait_for_job(job_id, timeout=60)
    assert job["status"] == "cancelled" and job["result_version"] is None
    assert api.get(f"/v1/models/{model['id']}").json()["latest_version"] == 1


def test_idempotency_key_replays_and_rejects_other_bodies(sqlite_api, digits_npz):
    api = sqlite_api
    headers = {"Idempotency-Key": "upload-1"}
    first = api.post("/v1/datasets", data={"name": "a"}, headers=headers,
                     files={"file": ("d.npz", digits_npz)})
    again = api.post("/v1/datasets", data={"name": "a"}, headers=headers,
                     files={"file": ("d.npz", digits_npz)})
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    other = api.post("/v1/datasets", data={"name": "b"}, headers=headers,
                     files={"file": ("d.npz", digits_npz)})
    assert other.status_code == 422
    assert other.headers["content-type"] == "application/problem+json"
    assert len(api.get("/v1/datasets").json()["items"]) == 1


def test_sample_pages_cover_every_sample_once(sqlite_api, digits_npz):
    api = sqlite_api
    dataset = api.upload_dataset(digits_npz).json()
    seen, cursor = [], None
    while True:
        params = {"limit": 400} | ({"cursor": cursor} if cursor else {})
        page = api.get(f"/v1/datasets/{dataset['id']}/samples", params=params).json()
        seen += [s["id"] for s in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == dataset["num_train"]
    threes = api.get(f"/v1/datasets/{dataset['id']}/samples",
                     params={"label": 3, "limit": 1000}).json()["items"]
    assert threes and all(s["label"] == 3 for s in threes)


def test_catalogue_lists_methods_and_architectures(sqlite_api):
    methods = {m["name"]: m for m in sqlite_api.get("/v1/methods").json()}
    assert {"finetune", "retrain"} <= set(methods)
    for method in methods.values():
        assert method["summary"] and method["reference"]
        assert method["params_schema"]["type"] == "object"
        assert "seed" in method["params_schema"]["properties"]
    archs = {a["name"] for a in sqlite_api.get("/v1/architectures").json()}
    assert {"mlp", "allcnn", "smallvgg", "resnet18"} <= archs


def test_operations_endpoints(sqlite_api):
    assert sqlite_api.client.get("/healthz").status_code == 200
    ready = sqlite_api.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": True,
                                                                   "broker": True}
    metrics = sqlite_api.client.get("/metrics")
    assert metrics.status_code == 200 and "lethe_http_requests_total" in metrics.text
