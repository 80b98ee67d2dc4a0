"""Load generation: concurrent keep-alive clients timing each request with perf_counter.

The clients are a few lines of HTTP/1.1 over asyncio streams rather than httpx: on a small
machine the load generator shares the CPUs with the server it measures, and httpx's own cost
per request (several times this one's) would be counted against the service. Every response
the service gives here has a Content-Length (FastAPI's JSON responses), which keeps the
parser this short; a chunked one is read too, just in case.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlparse


@dataclass
class Endpoint:
    """Where a stack's API listens and how to authenticate to it."""

    url: str
    token: str

    @property
    def host_port(self) -> tuple[str, int]:
        parsed = urlparse(self.url)
        return parsed.hostname, parsed.port


class Connection:
    """One keep-alive HTTP/1.1 connection, reopened when the server closes it."""

    def __init__(self, endpoint: Endpoint):
        self.host, self.port = endpoint.host_port
        self._head = (f"Host: {self.host}:{self.port}\r\n"
                      f"Authorization: Bearer {endpoint.token}\r\n").encode()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes | None = None
                      ) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        extra = (b"" if body is None else
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body))
        self._writer.write(b"%s %s HTTP/1.1\r\n%s%s\r\n%s" % (
            method.encode(), path.encode(), self._head, extra, body or b""))
        head = await self._reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        headers = head.lower()
        if b"transfer-encoding: chunked" in headers:
            content = await self._read_chunked()
        else:
            start = headers.find(b"content-length:")
            length = int(headers[start + 15:headers.find(b"\r\n", start)]) if start >= 0 else 0
            content = await self._reader.readexactly(length)
        if b"connection: close" in headers:
            await self.close()
        return status, content

    async def _read_chunked(self) -> bytes:
        parts = []
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            parts.append(await self._reader.readexactly(size + 2))
            if size == 0:
                return b"".join(parts)[:-2]

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._reader = self._writer = None


@dataclass
class LoadResult:
    """What one load point gave: request counts by status and per-request latencies."""

    concurrency: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    note: str | None = None

    @property
    def ok(self) -> int:
        return sum(count for status, count in self.statuses.items() if 200 <= status < 300)

    def summary(self) -> dict:
        lat = sorted(self.latencies_ms)
        return {"concurrency": self.concurrency, "seconds": round(self.seconds, 3),
                "requests": len(lat), "ok": self.ok,
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
                "errors": self.errors, "per_second": round(self.ok / self.seconds, 1),
                "per_minute": round(60 * self.ok / self.seconds),
                "p50_ms": round(percentile(lat, 50), 2), "p99_ms": round(percentile(lat, 99), 2),
                "mean_ms": round(sum(lat) / len(lat), 2) if lat else None,
                **({"note": self.note} if self.note else {})}


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (nan when empty)."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


# A request maker: given the client's number, the next (method, path, body), or None when the
# workload has run out (e.g. no sample left to forget).
RequestMaker = Callable[[int], tuple[str, str, bytes | None] | None]


# Told each counted response's status and body (e.g. to collect the jobs requests went to).
Observer = Callable[[int, bytes], None]


async def _client(index: int, endpoint: Endpoint, make: RequestMaker, stop_at: float,
                  record_from: float, result: LoadResult, exhausted: asyncio.Event,
                  observe: Observer | None) -> None:
    connection = Connection(endpoint)
    try:
        while not exhausted.is_set() and time.perf_counter() < stop_at:
            spec = make(index)
            if spec is None:
                exhausted.set()
                return
            started = time.perf_counter()
            try:
                status, content = await connection.request(*spec)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                await connection.close()
                if started >= record_from:
                    result.errors += 1
                continue
            if started >= record_from:  # requests of the warm-up are not counted
                result.latencies_ms.append(1000 * (time.perf_counter() - started))
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if observe is not None:
                    observe(status, content)
    finally:
        await connection.close()


async def _run_load(endpoint: Endpoint, make: RequestMaker, concurrency: int, seconds: float,
                    warmup: float, observe: Observer | None) -> LoadResult:
    result = LoadResult(concurrency, seconds)
    start = time.perf_counter()
    record_from, stop_at = start + warmup, start + warmup + seconds
    exhausted = asyncio.Event()
    await asyncio.gather(*(_client(i, endpoint, make, stop_at, record_from, result, exhausted,
                                   observe) for i in range(concurrency)))
    # Rates are over the time the counted requests took: the window, and the tail of those
    # still in flight when it closed (a request queued for longer than the window would
    # otherwise be counted against a window it outlasted).
    result.seconds = max(1e-9, time.perf_counter() - record_from)
    if exhausted.is_set():
        result.note = "the workload ran out before the window ended"
    elif not result.latencies_ms and not result.errors:
        result.note = (f"no request started in the {seconds:g}-s window: every client was still "
                       f"waiting on one sent in the {warmup:g}-s warm-up (lengthen both)")
    return result


def run_load(endpoint: Endpoint, make: RequestMaker, concurrency: int, seconds: float,
             warmup: float = 1.0, observe: Observer | None = None) -> LoadResult:
    """``concurrency`` clients issuing ``make``'s requests back to back for ``seconds``,
    after ``warmup`` seconds that fill the server's pools and are not counted."""
    return _new_loop_run(_run_load(endpoint, make, concurrency, seconds, warmup, observe))


def _new_loop_run(coroutine):
    try:
        import uvloop  # the loop uvicorn serves on, and a cheaper client too

        return uvloop.run(coroutine)
    except ImportError:
        return asyncio.run(coroutine)


def poll_requests(job_id: str) -> RequestMaker:
    request = ("GET", f"/v1/jobs/{job_id}", None)
    return lambda _index: request


def deletion_requests(model_ids: list[str], pool: SamplePool, body: dict) -> RequestMaker:
    """One sample per request, each client on the models in turn, so every model gets its
    share; None once a model has no sample left."""
    turn = {"next": 0}

    def make(_index: int):
        model_id = model_ids[turn["next"] % len(model_ids)]
        turn["next"] += 1
        sample_id = pool.take(model_id)
        if sample_id is None:
            return None
        payload = json.dumps(body | {"sample_ids": [sample_id]}).encode()
        return "POST", f"/v1/models/{model_id}/deletion-requests", payload

    return make


class SamplePool:
    """Training sample ids not yet asked to be forgotten, per model: a request naming one
    already forgotten or scheduled is refused, so every request must name a fresh one."""

    def __init__(self, sample_ids: list[str], keep: int):
        self._ids = sample_ids
        self._limit = len(sample_ids) - keep  # leave rows to retain (never forget them all)
        self._used: dict[str, int] = {}

    def take(self, model_id: str) -> str | None:
        used = self._used.get(model_id, 0)
        if used >= self._limit:
            return None
        self._used[model_id] = used + 1
        return self._ids[used]

    def used(self, model_id: str) -> int:
        return self._used.get(model_id, 0)
