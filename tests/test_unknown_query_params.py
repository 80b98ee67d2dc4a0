"""A /v1 route refuses a query parameter it does not declare: a 422 problem naming it and the
ones the route accepts, before anything is read or written. Routes outside /v1 are as before."""

from __future__ import annotations

import json
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI, Query
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from tests.conftest import api_client
from tests.test_api_flow import register_digits, sample_ids
from tests.test_api_rejects import assert_problem, stored_state

JOBS_LIST = "cursor, limit, model_id, status"


def assert_unknown(response, *names: str, accepts: str | None) -> dict:
    """The problem for ``names`` (in that order) on a route accepting ``accepts``."""
    quoted = ", ".join(repr(n) for n in names)
    noun = "parameter" if len(names) == 1 else "parameters"
    tail = f"this route accepts: {accepts}" if accepts else "this route accepts no query parameters"
    body = assert_problem(response, 422)
    assert body["type"] == "https://lethe.dev/problems/validation"
    assert body["detail"] == f"unknown query {noun} {quoted}; {tail}"
    assert body["errors"] == [{"field": n, "message": "unknown query parameter"} for n in names]
    return body


@pytest.fixture
def home(configure):
    return configure()


@pytest.fixture
def api(home):
    with api_client(run_worker=False) as client:  # jobs stay queued: nothing moves meanwhile
        yield client


@pytest.fixture
def served(api, digits_npz, digits_weights) -> dict:
    """Two models (tagged), and a deletion request with its queued job on the first."""
    dataset, model = register_digits(api, digits_npz, digits_weights,
                                     tags=json.dumps({"team": "a", "stage": "prod"}))
    _, other = register_digits(api, digits_npz, digits_weights, tags=json.dumps({"team": "a"}))
    ids = sample_ids(api, dataset["id"], 4)
    url = f"/v1/models/{model['id']}/deletion-requests"
    first = api.post(url, json={"sample_ids": ids[:2]})
    assert first.status_code == 202, first.text
    return {"dataset": dataset, "model": model, "other": other, "ids": ids,
            "job_id": first.json()["job_id"], "request_id": first.json()["id"]}


def test_representative_routes_name_the_unknown_parameter_and_what_they_accept(api, served):
    model, job = served["model"]["id"], served["job_id"]
    cases = [
        (f"/v1/jobs?after={job}", "after", JOBS_LIST),
        ("/v1/models?limt=5", "limt", "cursor, limit, name, tag"),
        (f"/v1/models/{model}/versions?page=2", "page", "cursor, limit, tag"),
        ("/v1/audit?after=3", "after", "cursor, limit"),
        ("/v1/audit/verify?anchor=1", "anchor", "anchor_hash, anchor_seq, full"),
        (f"/v1/jobs/{job}?wait=30", "wait", None),  # the poll path
        (f"/v1/models/{model}?expand=versions", "expand", None),
        ("/v1/methods?verbose=1", "verbose", None),  # the catalogue
    ]
    for url, name, accepts in cases:
        assert_unknown(api.get(url), name, accepts=accepts)


def test_a_misspelt_cursor_is_refused_not_answered_with_page_one_again(api, served):
    page = api.get("/v1/audit", params={"limit": 1}).json()
    assert page["next_cursor"]
    assert_unknown(api.get("/v1/audit", params={"limit": 1, "after": page["next_cursor"]}),
                   "after", accepts="cursor, limit")
    second = api.get("/v1/audit", params={"limit": 1, "cursor": page["next_cursor"]}).json()
    assert second["items"][0]["seq"] > page["items"][0]["seq"]


def test_each_unknown_parameter_is_named_once_in_the_order_given(api):
    response = api.get("/v1/jobs?limt=5&after=x&limit=2&limt=3")
    assert_unknown(response, "limt", "after", accepts=JOBS_LIST)
    assert response.json()["instance"] == "/v1/jobs"


def test_a_post_or_delete_with_an_unknown_parameter_changes_nothing(api, home, served,
                                                                   digits_npz):
    model, job, ids = served["model"]["id"], served["job_id"], served["ids"]
    before = stored_state(home)
    assert_unknown(api.post(f"/v1/models/{model}/deletion-requests?dry_run=true",
                            json={"sample_ids": ids[2:]}), "dry_run", accepts=None)
    assert_unknown(api.post(f"/v1/jobs/{job}/cancel?force=1"), "force", accepts=None)
    assert_unknown(api.delete(f"/v1/models/{served['other']['id']}?cascade=1"), "cascade",
                   accepts=None)
    assert_unknown(api.post("/v1/datasets?public=1", data={"name": "digits"},
                            files={"file": ("digits.npz", digits_npz)}), "public",
                   accepts=None)
    assert_unknown(api.post("/v1/api-keys?ttl=60", json={"name": "ci"},
                            headers={"Idempotency-Key": "key-1"}), "ttl", accepts=None)
    assert stored_state(home) == before  # no row, no audit event, no blob, nothing staged
    assert api.get(f"/v1/jobs/{job}").json()["status"] == "queued"

    # The refused request did not take its idempotency key either.
    created = api.post("/v1/api-keys", json={"name": "ci"}, headers={"Idempotency-Key": "key-1"})
    assert created.status_code == 201, created.text


def test_declared_parameters_still_work(api, served):
    model, dataset = served["model"], served["dataset"]
    jobs = api.get("/v1/jobs", params={"status": "queued", "model_id": model["id"], "limit": 5})
    assert jobs.status_code == 200, jobs.text
    assert [j["id"] for j in jobs.json()["items"]] == [served["job_id"]]
    models = api.get("/v1/models", params={"name": "clf", "limit": 1})
    assert models.status_code == 200 and models.json()["next_cursor"]
    samples = api.get(f"/v1/datasets/{dataset['id']}/samples", params={"label": 3, "limit": 2})
    assert samples.status_code == 200 and len(samples.json()["items"]) == 2
    requests = api.get("/v1/deletion-requests", params={"overdue": "false", "subject": "nobody"})
    assert requests.status_code == 200 and requests.json()["items"] == []
    verdict = api.get("/v1/audit/verify", params={"full": "true"})
    assert verdict.status_code == 200 and verdict.json()["valid"]
    # A declared parameter's own validation is unchanged.
    assert_problem(api.get("/v1/jobs", params={"limit": 0}), 422, "limit")


def test_a_repeated_list_parameter_still_filters(api, served):
    first, other = served["model"]["id"], served["other"]["id"]

    def listed(query: str) -> set[str]:
        response = api.get(f"/v1/models?{query}")
        assert response.status_code == 200, response.text
        return {m["id"] for m in response.json()["items"]}

    assert listed("tag=team:a") == {first, other}
    assert listed("tag=team:a&tag=stage:prod") == {first}
    assert listed("tag=team:a&tag=stage:prod&limit=10") == {first}
    assert_unknown(api.get("/v1/models?tag=team:a&tags=stage:prod"), "tags",
                   accepts="cursor, limit, name, tag")


def test_routes_outside_v1_are_unaffected(api):
    health = api.get("/healthz?verbose=1&x=")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert api.get("/metrics?format=json").status_code == 200
    assert api.get("/openapi.json?v=2").status_code == 200
    assert api.get("/docs?x=1").status_code == 200
    sign_in = api.client.get("/ui/sign-in?next=/ui/models&theme=dark")
    assert sign_in.status_code == 200 and "text/html" in sign_in.headers["content-type"]


def test_every_v1_operation_refuses_an_unknown_parameter_and_lists_what_it_documents(api):
    """Whatever route is added under /v1 is covered, and what it accepts is what the OpenAPI
    document says it takes."""
    document = api.client.app.openapi()
    checked = 0
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            documented = sorted(p["name"] for p in operation.get("parameters", [])
                                if p["in"] == "query")
            url = path.replace("{version}", "1")
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path":
                    url = url.replace("{" + parameter["name"] + "}", "x")
            response = getattr(api, method)(url, params={"zz_unknown": "1"})
            if not path.startswith("/v1/"):
                assert response.status_code != 422 or "zz_unknown" not in response.text, path
                continue
            assert_unknown(response, "zz_unknown", accepts=", ".join(documented))
            checked += 1
    assert checked >= 45


class Filters(BaseModel):  # at module level: FastAPI resolves the annotations here
    colour: str | None = None
    max_size: int | None = Field(None, alias="max-size")


def paging(page_size: int = Query(10, alias="page-size")) -> int:
    return page_size


def test_what_a_route_accepts_comes_from_its_whole_dependency_tree_by_alias():
    """Aliases, a dependency's own parameters, and a Pydantic model of query parameters."""
    from app.core.errors import install_error_handlers
    from app.core.query_params import refuse_undeclared_query_params

    app = FastAPI(dependencies=[Depends(refuse_undeclared_query_params)])
    install_error_handlers(app)

    @app.get("/v1/things")
    def things(filters: Annotated[Filters, Query()], size: int = Depends(paging),
               q: str | None = None):
        return {"filters": filters.model_dump(by_alias=True), "size": size, "q": q}

    @app.get("/elsewhere")
    def elsewhere():
        return {}

    with TestClient(app) as client:
        ok = client.get("/v1/things?colour=red&max-size=3&page-size=2&q=x")
        assert ok.status_code == 200, ok.text
        assert ok.json() == {"filters": {"colour": "red", "max-size": 3}, "size": 2, "q": "x"}
        assert_unknown(client.get("/v1/things?page_size=2&filters=1"), "page_size", "filters",
                       accepts="colour, max-size, page-size, q")
        assert client.get("/elsewhere?anything=1").status_code == 200
