"""The three core methods, driven through the API like a user would."""

from __future__ import annotations

import pytest

from tests.methods_fixtures import DIGITS_PARAMS
from tests.test_api_flow import register_digits, sample_ids


@pytest.mark.slow
@pytest.mark.parametrize("method", list(DIGITS_PARAMS))
def test_core_method_forgets_a_class_through_the_api(api, method, digits_npz, digits_weights):
    _, model = register_digits(api, digits_npz, digits_weights)
    response = api.post(f"/v1/models/{model['id']}/deletion-requests",
                        json={"classes": [4], "method": method,
                              "params": DIGITS_PARAMS[method] | {"seed": 1}})
    assert response.status_code == 202, response.text
    job = api.wait_for_job(response.json()["job_id"])
    assert job["status"] == "succeeded", job
    metrics = job["metrics"]
    assert metrics["forget_accuracy"] < 0.05
    assert metrics["retain_accuracy"] > 0.9
    if method == "feature-constraint":
        assert set(metrics["balance_weights"]) == {"forget", "recover"}


@pytest.mark.slow
def test_projected_gradient_chain_reuses_the_cached_matrices(api, digits_npz, digits_weights):
    _, model = register_digits(api, digits_npz, digits_weights)
    ids = sample_ids(api, model["dataset_id"], 90)
    jobs = []
    for chunk in (ids[:30], ids[30:60], ids[60:]):
        response = api.post(f"/v1/models/{model['id']}/deletion-requests",
                            json={"sample_ids": chunk, "method": "projected-gradient",
                                  "params": DIGITS_PARAMS["projected-gradient"]})
        jobs.append(api.wait_for_job(response.json()["job_id"]))
    assert [j["status"] for j in jobs] == ["succeeded"] * 3
    assert [(j["base_version"], j["result_version"]) for j in jobs] == [(1, 2), (2, 3), (3, 4)]
    assert [j["metrics"]["state_source"] for j in jobs] == ["computed", "cached", "cached"]
    versions = api.get(f"/v1/models/{model['id']}/versions").json()["items"]
    assert [v["parent_version"] for v in versions] == [None, 1, 2, 3]
