"""Cursor pagination: ``?limit=&cursor=`` in, ``{"items", "next_cursor"}`` out."""

from __future__ import annotations

import base64
from typing import Annotated, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel

from app.core.errors import invalid

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None


class PageParams(BaseModel):
    limit: int
    after: str | None  # the sort key of the last item already seen


def encode_cursor(key: str | int) -> str:
    return base64.urlsafe_b64encode(str(key).encode()).decode().rstrip("=")


def page_params(
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size.")] = 50,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
) -> PageParams:
    after = None
    if cursor:
        try:
            after = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        except (ValueError, UnicodeDecodeError):
            raise invalid("cursor: not a cursor this service issued") from None
    return PageParams(limit=limit, after=after)


def page_of(rows: list, params: PageParams, key, convert) -> dict:
    """``rows`` were fetched with ``limit + 1``; the extra row says whether more exist."""
    more = len(rows) > params.limit
    rows = rows[: params.limit]
    return {"items": [convert(r) for r in rows],
            "next_cursor": encode_cursor(key(rows[-1])) if more and rows else None}
