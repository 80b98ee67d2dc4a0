"""Refusing query parameters a /v1 route does not declare.

A parameter no route reads used to be ignored: ``GET /v1/jobs?after=X`` (the route's is
``cursor``) answered page one again, ``?limt=5`` the default page size. Every ``/v1`` route now
answers it with a 422 problem naming the unknown parameters and the ones the route accepts.
:func:`refuse_undeclared_query_params` is an app-wide dependency that runs before the route's
own (before the key is looked up, a session opened or anything written); routes outside
``/v1`` (probes, metrics, the console, the docs) are left as they were.

What a route accepts is what FastAPI itself reads and documents: the query parameters of the
endpoint and of every dependency below it, by alias, a Pydantic model of query parameters
counting as its fields. It is worked out once per route, for every route of the app at the
first request that carries a query string; a request without one costs a single check.
"""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_flat_params
from fastapi.routing import APIRoute, iter_route_contexts

from app.core.errors import Problem, invalid

PREFIX = "/v1"  # the routes checked: this path and those below it
_STATE = "declared_query_params"  # app.state: id(route) -> its names, or None (not checked)


def declared_query_params(dependant: Dependant) -> frozenset[str]:
    """The query parameters a route's dependant (and its dependencies, at any depth) reads."""
    fields, pending = [], [dependant]
    while pending:
        current = pending.pop()
        fields.extend(current.query_params)
        pending.extend(current.dependencies)
    # FastAPI's own flattening (a model of query parameters becomes its fields), as in the
    # OpenAPI document.
    return frozenset(field.alias for field in get_flat_params(Dependant(query_params=fields)))


def _checked(path: str | None) -> bool:
    return path is not None and (path == PREFIX or path.startswith(PREFIX + "/"))


def index_routes(app: FastAPI) -> dict[int, frozenset[str] | None]:
    """What each of the app's routes accepts (None: a route outside /v1, not checked), keyed
    by the route object's id: the route a request matched is ``scope["route"]``. The
    dependant is the route's as included, with the app's and its router's dependencies."""
    index: dict[int, frozenset[str] | None] = {}
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if not isinstance(route, APIRoute):
            continue
        key = id(route)
        if _checked(context.path):
            # One route object included at several paths accepts what any of them declares.
            index[key] = (index.get(key) or frozenset()) | declared_query_params(
                context.dependant)
        else:
            index.setdefault(key, None)
    setattr(app.state, _STATE, index)
    return index


def unknown_query_params(names: Iterable[str], accepted: frozenset[str]) -> Problem:
    unknown = list(dict.fromkeys(names))  # each once, in the order given
    noun = "parameter" if len(unknown) == 1 else "parameters"
    accepts = (f"this route accepts: {', '.join(sorted(accepted))}" if accepted
               else "this route accepts no query parameters")
    return invalid(f"unknown query {noun} {', '.join(repr(n) for n in unknown)}; {accepts}",
                   errors=[{"field": name, "message": "unknown query parameter"}
                           for name in unknown])


async def refuse_undeclared_query_params(request: Request) -> None:
    """422 naming every query parameter the matched /v1 route does not declare."""
    scope = request.scope
    if not scope.get("query_string"):
        return  # the poll path, and nearly every other request: nothing to check
    key = id(scope.get("route"))
    index = getattr(request.app.state, _STATE, None)
    if index is None or key not in index:  # the first query string, or a route added since
        index = index_routes(request.app)
        index.setdefault(key, None)  # not the app's: never looked for again
    accepted = index[key]
    if accepted is None:
        return
    names = request.query_params.keys()
    if any(name not in accepted for name in names):
        raise unknown_query_params((n for n in names if n not in accepted), accepted)
