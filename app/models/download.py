"""Checkpoint downloads: strong ETag from the sha256, single byte ranges answered with 206."""

from __future__ import annotations

import re

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from app.core.errors import Problem
from app.core.storage import BlobStore

RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
CHECKPOINT_TYPE = "application/octet-stream"


class CheckpointResponse(StreamingResponse):
    """What the OpenAPI document says a download answers with."""

    media_type = CHECKPOINT_TYPE


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``(start, end)`` inclusive, or None to send everything (ranges we do not serve)."""
    match = RANGE.match(header.strip())
    if not match or match.groups() == ("", ""):
        return None  # RFC 9110: a server may ignore a Range it does not understand
    first, last = match.groups()
    if first == "":
        start, end = max(0, size - int(last)), size - 1
    else:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
        if last and int(last) < start:
            return None
    if start >= size or size == 0:
        raise Problem(416, f"range not satisfiable: the checkpoint has {size} bytes",
                      slug="range-not-satisfiable", headers={"Content-Range": f"bytes */{size}"})
    return start, end


def checkpoint_response(request: Request, store: BlobStore, sha256: str, size: int,
                        filename: str) -> Response:
    etag = f'"{sha256}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes",
               "Content-Disposition": f'attachment; filename="{filename}"'}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    wanted = None
    if_range = request.headers.get("if-range")
    if "range" in request.headers and (if_range is None or if_range == etag):
        wanted = parse_range(request.headers["range"], size)
    start, end = wanted or (0, size - 1)
    headers["Content-Length"] = str(end - start + 1)
    status = 200
    if wanted:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return CheckpointResponse(store.read_range(sha256, start, end), status_code=status,
                              headers=headers)
