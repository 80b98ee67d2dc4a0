"""Refusing, before any work, input the database would refuse only at the end of the work.

PostgreSQL stores no NUL character in text, psycopg cannot encode lone surrogates (which JSON's
``\\ud800`` escapes produce), and integer columns are 32-bit: such input used to pass every
check and fail at the query or the insert, as a 500. :func:`refuse_unstorable_text` runs
before every route (an app-wide dependency) over everything FastAPI has parsed of the request.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Annotated, Any

from fastapi import Request, params
from pydantic import Field
from starlette.datastructures import UploadFile

from app.core.errors import invalid

INT32_MAX = 2**31 - 1  # INTEGER columns: versions, labels, rows
Int32 = Annotated[int, Field(ge=0, le=INT32_MAX)]
CHECKED_HEADERS = ("idempotency-key",)  # the one header stored


def unstorable(text: str) -> str | None:
    """Why the database cannot store ``text``, or None when it can."""
    if "\x00" in text:
        return "NUL characters are not allowed"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid Unicode text (lone surrogates)"
    return None


def _strings(value: Any, where: str) -> Iterator[tuple[str, str]]:
    """Every string in a parsed JSON value, keys included, with where it sits."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else key
            yield path, key
            yield from _strings(item, path)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{where}[{index}]")


async def _parsed_body(request: Request) -> Iterable[tuple[str, str]]:
    """The body's strings, as FastAPI already parsed them (Starlette caches the parse)."""
    body_field = getattr(request.scope.get("route"), "body_field", None)
    if body_field is None:
        return ()
    if isinstance(body_field.field_info, params.Form):
        form = await request.form()
        return [(key, value) for key, value in form.multi_items()
                if not isinstance(value, UploadFile)]
    try:
        return list(_strings(await request.json(), ""))
    except ValueError:  # not JSON: the route's own validation answers that
        return ()


async def refuse_unstorable_text(request: Request) -> None:
    """422 naming the first path parameter, query parameter, stored header, form field or JSON
    string (at any depth) the database could not store."""
    fields = [*request.path_params.items(), *request.query_params.multi_items(),
              *((name, request.headers[name]) for name in CHECKED_HEADERS
                if name in request.headers),
              *await _parsed_body(request)]
    for field, text in fields:
        if isinstance(text, str) and (reason := unstorable(text)):
            raise invalid(f"{field}: {reason}", errors=[{"field": field, "message": reason}])
