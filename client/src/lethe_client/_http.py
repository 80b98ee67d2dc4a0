"""HTTP with the service: authentication, retries with backoff, idempotency keys, problems."""

from __future__ import annotations

import contextlib
import json
import random
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from lethe_client._version import __version__
from lethe_client.errors import ConnectionFailed, api_error
from lethe_client.models import Problem

# Worth asking again: the service is shedding load or restarting, or a proxy lost it.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# Transport errors after which the same request may be sent again. Every POST carries an
# Idempotency-Key, so even a request the server did receive (its answer was lost) is answered
# by a replay of the first response, never done twice.
RETRY_ERRORS = (httpx.TransportError,)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: ``backoff * 2**n`` seconds (at most ``max_backoff``),
    times a random factor in [0.5, 1.5); a ``Retry-After`` header wins when it is longer."""

    retries: int = 5
    backoff: float = 0.5
    max_backoff: float = 8.0

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        delay = min(self.max_backoff, self.backoff * 2 ** attempt) * (0.5 + random.random())
        if retry_after:
            with contextlib.suppress(ValueError):  # an HTTP date: keep our own delay
                delay = max(delay, min(float(retry_after), 60.0))
        return delay


def problem_of(response: httpx.Response) -> Problem:
    """The response's RFC 9457 problem, or one made from its status when it has none."""
    try:
        text = response.text
        body = json.loads(text) if text else None
    except (ValueError, httpx.ResponseNotRead):
        text, body = "", None
    if isinstance(body, dict) and {"type", "title", "status", "detail"} <= body.keys():
        try:
            return Problem.model_validate(body)
        except ValueError:
            pass
    return Problem(type="about:blank", title=response.reason_phrase or "Error",
                   status=response.status_code, detail=text[:500] or response.reason_phrase)


class Transport:
    """One ``httpx.Client`` bound to a base URL and a token."""

    def __init__(self, url: str, token: str | None, *, timeout: httpx.Timeout | float,
                 retry: RetryPolicy, http: httpx.Client | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        headers = {"User-Agent": f"lethe-client/{__version__}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.url = url.rstrip("/")
        self.retry = retry
        self.sleep = sleep
        self.http = http or httpx.Client(base_url=self.url, timeout=timeout)
        self.http.headers.update(headers)

    def close(self) -> None:
        self.http.close()

    def _build(self, method: str, path: str, *, headers: dict[str, str],
               files: Callable[[], Any] | None, **kwargs: Any) -> tuple[httpx.Request, list]:
        opened: list = []
        if files is not None:
            parts = files()
            opened = [part[1] for part in parts.values()
                      if isinstance(part, tuple) and hasattr(part[1], "close")]
            kwargs["files"] = parts
        return self.http.build_request(method, path, headers=headers, **kwargs), opened

    def send(self, method: str, path: str, *, stream: bool = False,
             headers: dict[str, str] | None = None, files: Callable[[], Any] | None = None,
             idempotency_key: str | None = None, **kwargs: Any) -> httpx.Response:
        """Send, retrying on connection errors and on 429/502/503/504; raise the typed
        :class:`ApiError` for any other error status. ``files`` is a callable so a retried
        upload reopens its files. A POST always carries an ``Idempotency-Key`` (the same one on
        every retry)."""
        headers = dict(headers or {})
        if method == "POST":
            headers["Idempotency-Key"] = idempotency_key or uuid.uuid4().hex
        attempt = 0
        while True:
            request, opened = self._build(method, path, headers=headers, files=files, **kwargs)
            try:
                response = self.http.send(request, stream=stream)
            except RETRY_ERRORS as exc:
                if attempt >= self.retry.retries:
                    raise ConnectionFailed(
                        f"{method} {request.url}: {type(exc).__name__}: {exc} (after "
                        f"{attempt + 1} attempts)") from exc
                self.sleep(self.retry.delay(attempt))
                attempt += 1
                continue
            finally:
                for handle in opened:
                    handle.close()
            if response.status_code in RETRY_STATUSES and attempt < self.retry.retries:
                response.close()
                self.sleep(self.retry.delay(attempt, response.headers.get("retry-after")))
                attempt += 1
                continue
            if response.status_code >= 400:
                if stream:
                    response.read()
                    response.close()
                raise api_error(problem_of(response), method=method, url=str(request.url),
                                headers=dict(response.headers))
            return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.send(method, path, **kwargs)
        return response.json() if response.content else None

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        response = self.send(method, path, stream=True, **kwargs)
        try:
            yield response
        finally:
            response.close()
