"""Cursor pagination: ``?limit=&cursor=`` in, ``{"items", "next_cursor"}`` out.

A cursor is the sort key of the last item seen, base64url-encoded. Each listing decodes it with
the key of its own kind and hands its service a validated, normalised key: a cursor this
service never issued (``YQ``, an id of another shape, a number past the column's range, a
deadline without a time zone) is a 422 here, never a failed query.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel

from app.core.errors import invalid
from app.core.guards import INT32_MAX

T = TypeVar("T")
CursorKey = Callable[[str], str]  # decoded cursor -> validated key; ValueError if not ours
_ID = re.compile(r"[a-z]+_[0-9a-f]{24}")  # app.core.ids.new_id
_ROW = re.compile(r"[0-9]{1,10}")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None


class PageParams(BaseModel):
    limit: int
    after: str | None  # the sort key of the last item already seen, validated


def encode_cursor(key: str | int) -> str:
    return base64.urlsafe_b64encode(str(key).encode()).decode().rstrip("=")


def id_key(text: str) -> str:
    """Listings sorted by id (datasets, models, jobs)."""
    if not _ID.fullmatch(text):
        raise ValueError("not an id")
    return text


def number_key(text: str) -> str:
    """Listings sorted by a 32-bit number (sample rows, versions, audit sequence numbers)."""
    if not _ROW.fullmatch(text) or int(text) > INT32_MAX:
        raise ValueError("not a row number")
    return text


def deadline_key(text: str) -> str:
    """Deletion requests, sorted by ``<deadline>|<id>``: the deadline comes back in UTC, the
    form it is stored in (SQLite compares it as text)."""
    deadline, separator, request_id = text.partition("|")
    if not separator:
        raise ValueError("no deadline")
    when = datetime.fromisoformat(deadline)
    if when.tzinfo is None:
        raise ValueError("a deadline without a time zone")
    try:
        when = when.astimezone(UTC)
    except OverflowError:
        raise ValueError("a deadline out of range") from None
    return f"{when.isoformat()}|{id_key(request_id)}"


def _decode(cursor: str) -> str:
    return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()


def paging(key: CursorKey) -> Callable[..., PageParams]:
    """The ``limit`` and ``cursor`` dependency of a listing whose cursors ``key`` validates."""

    def page_params(
        limit: Annotated[int, Query(ge=1, le=1000, description="Page size.")] = 50,
        cursor: Annotated[str | None, Query(
            description="`next_cursor` of the previous page.")] = None,
    ) -> PageParams:
        after = None
        if cursor:
            try:
                after = key(_decode(cursor))
            except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors too
                raise invalid("cursor: not a cursor this service issued", errors=[
                    {"field": "cursor", "message": "not a cursor this service issued"}]) from None
        return PageParams(limit=limit, after=after)

    return page_params


page_params = paging(id_key)
number_page_params = paging(number_key)
deadline_page_params = paging(deadline_key)


def page_of(rows: list, params: PageParams, key, convert) -> dict:
    """``rows`` were fetched with ``limit + 1``; the extra row says whether more exist."""
    more = len(rows) > params.limit
    rows = rows[: params.limit]
    return {"items": [convert(r) for r in rows],
            "next_cursor": encode_cursor(key(rows[-1])) if more and rows else None}
