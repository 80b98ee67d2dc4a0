"""Schemathesis over the OpenAPI document: every operation is fuzzed in-process (SQLite), with
a valid token and real resources to hit, and must answer with no 5xx and only the status codes,
content types and bodies the document describes."""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import Api, create_token, point_lethe_at, reset_caches
from tests.test_api_flow import register_digits, sample_ids

pytestmark = pytest.mark.slow

# Per operation and generation phase: the whole run stays near a minute on two busy cores.
MAX_EXAMPLES = 40
SEED = 20261201  # the same cases on every run
CONFORMANCE = [status_code_conformance, content_type_conformance, response_schema_conformance]
CHECKS = [not_a_server_error, *CONFORMANCE]
# Its 503 is a documented verdict, not a failure: in-process, no worker runs here.
READINESS = "/readyz"
SEEN: Counter[int] = Counter()  # the status codes answered, printed at the end


def _document() -> dict[str, Any]:
    """The app's OpenAPI document; building it touches no database."""
    from app.core.config import get_settings
    from app.main import create_app

    document = create_app(run_worker=False).openapi()
    get_settings.cache_clear()  # the tests' own settings come later
    return document


schema = schemathesis.openapi.from_dict(_document())
schema.config.seed = SEED
schema.config.generation.update(max_examples=MAX_EXAMPLES,
                                modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
schema.config.phases.update(phases=["examples", "coverage", "fuzzing"])


@dataclass
class Target:
    app: Any
    headers: dict[str, str]
    ids: dict[str, Any]  # path parameter -> a value naming a resource that exists
    sample_ids: list[str]


@pytest.fixture(scope="module")
def target(tmp_path_factory, digits_npz, digits_weights) -> Iterator[Target]:
    """One API on SQLite for the whole run: a dataset, a model, a request and its job."""
    from app.main import create_app

    with pytest.MonkeyPatch.context() as monkeypatch:
        point_lethe_at(monkeypatch, tmp_path_factory.mktemp("fuzz") / "home")
        app = create_app(run_worker=False)
        with TestClient(app) as client:
            api = Api(client, create_token("fuzz"))
            dataset, model = register_digits(api, digits_npz, digits_weights)
            forget = sample_ids(api, dataset["id"], 40)
            request = api.post(f"/v1/models/{model['id']}/deletion-requests",
                               json={"sample_ids": forget[:5]}).json()
            yield Target(app, api.headers, {
                "dataset_id": dataset["id"], "model_id": model["id"], "version": 1,
                "request_id": request["id"], "job_id": request["job_id"]}, forget[5:])
    reset_caches()
    print(f"\nschemathesis: {sum(SEEN.values())} requests, status codes "
          f"{dict(sorted(SEEN.items()))}")


def heads(value: Any) -> bool:
    """A coin tossed by the generated value itself, so a seeded run stays reproducible."""
    return zlib.crc32(repr(value).encode()) % 2 == 0


def aim_at_real_resources(case, target: Target) -> None:
    """Half the generated ids become ones that exist, so fuzzing gets past the 404s."""
    for name, real in target.ids.items():
        if name in (case.path_parameters or {}) and heads(case.path_parameters[name]):
            case.path_parameters[name] = real
    body = case.body if isinstance(case.body, dict) else {}
    if "dataset_id" in body and heads(body["dataset_id"]):
        body["dataset_id"] = target.ids["dataset_id"]
    if isinstance(body.get("sample_ids"), list) and heads(body["sample_ids"]):
        body["sample_ids"] = target.sample_ids[: len(body["sample_ids"])] or body["sample_ids"]


@schema.parametrize()
def test_the_api_answers_only_as_documented(case, target):
    aim_at_real_resources(case, target)
    checks = CONFORMANCE if case.operation.path == READINESS else CHECKS
    response = case.call_and_validate(app=target.app, headers=target.headers, checks=checks)
    SEEN[response.status_code] += 1
