"""The OpenAPI document's account of errors: every route lists the problems it can answer.

Routes name their error statuses with :func:`problems`; each is described as an RFC 9457
``application/problem+json`` body of the shared ``Problem`` schema, which
:func:`install_problem_schema` adds to the document's components.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field

from app.core.errors import PROBLEM_JSON

SCHEMA_NAME = "Problem"
WHEN = {
    400: "The body could not be read as the form or JSON the route takes.",
    401: "No bearer token, or one that is unknown or revoked.",
    404: "No such resource, or it belongs to another tenant.",
    409: "The resource is not in a state that allows this.",
    410: "The model version was withdrawn: it still carries data a later version forgot.",
    413: "The request body is larger than LETHE_MAX_REQUEST_BYTES.",
    416: "The Range asks for bytes the checkpoint does not have.",
    422: "A field is invalid; `errors` names each one. Text the database cannot store (NUL "
         "characters), cursors the service did not issue and query parameters the route "
         "does not declare are refused here too.",
}


class FieldError(BaseModel):
    field: str | None = Field(description="The offending field (dotted path), if one.")
    message: str


class ProblemBody(BaseModel):
    """An RFC 9457 problem; some carry more members (e.g. ``unknown_sample_ids``)."""

    model_config = ConfigDict(extra="allow", title=SCHEMA_NAME)

    type: str = Field(description="A URI naming the kind of problem.")
    title: str
    status: int
    detail: str
    instance: str | None = Field(None, description="The path of the request.")
    errors: list[FieldError] | None = None


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` entries of a route that can answer ``statuses`` with a problem."""
    reference = {"$ref": f"#/components/schemas/{SCHEMA_NAME}"}
    return {status: {"description": WHEN.get(status, HTTPStatus(status).phrase),
                     "content": {PROBLEM_JSON: {"schema": reference}}}
            for status in statuses}


# What most routes share: every /v1 route needs a token, and refuses a query parameter it
# does not declare (app/core/query_params.py); any with parameters validates them.
AUTHENTICATED = problems(401, 422)
VALIDATED = problems(401, 422)
ONE_RESOURCE = problems(401, 404, 422)
UPLOAD = problems(400, 401, 413, 422)


def install_problem_schema(app: FastAPI) -> None:
    """Generate the document once, with ``Problem`` (and what it refers to) in components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version,
                                   description=app.description, routes=app.routes)
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            problem = ProblemBody.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(problem.pop("$defs", {}))
            schemas[SCHEMA_NAME] = problem
            _document_body_limit(document)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi


def _document_body_limit(document: dict[str, Any]) -> None:
    """The body limit (app/core/limits.py) sits in front of every route, so any operation,
    a GET with a declared body included, can answer 413."""
    too_large = {str(status): entry for status, entry in problems(413).items()}
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            if isinstance(operation, dict) and "responses" in operation:
                for status, entry in too_large.items():
                    operation["responses"].setdefault(status, entry)
