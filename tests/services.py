"""Reaching the real PostgreSQL and Redis servers the suite runs against, and serving the app
on a real port."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

import pytest

POSTGRES_URL = os.environ.get("LETHE_TEST_POSTGRES_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("LETHE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url.replace("+psycopg", ""))
    try:
        with socket.create_connection((parsed.hostname, parsed.port or default_port), timeout=1):
            return True
    except OSError:
        return False


def require(name: str, url: str, default_port: int) -> None:
    """Skip where the server is absent (a laptop); fail where CI demands it."""
    if _reachable(url, default_port):
        return
    message = f"{name} is not reachable at {url}"
    if os.environ.get("LETHE_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{message}, and LETHE_REQUIRE_SERVICES=1 forbids skipping", pytrace=False)
    pytest.skip(f"{message}; start it or set LETHE_TEST_POSTGRES_URL / LETHE_TEST_REDIS_URL")


def require_postgres() -> None:
    require("PostgreSQL", POSTGRES_URL, 5432)


def require_redis() -> None:
    require("Redis", REDIS_URL, 6379)


@contextmanager
def moto_s3_server() -> Iterator[str]:
    """moto's S3-compatible server on a free loopback port (the stand-in for AWS S3, MinIO
    and Ceph); yields its endpoint URL. Skips where moto is not installed, as require does."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        message = "moto is not installed (pip install -e '.[dev]')"
        if os.environ.get("LETHE_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{message}, and LETHE_REQUIRE_SERVICES=1 forbids skipping",
                        pytrace=False)
        pytest.skip(f"{message}; the object-storage tests run against its S3 server")
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@contextmanager
def fresh_postgres_database():
    """A new, empty database on the PostgreSQL server, dropped afterwards."""
    from app.ops.bench.stack import fresh_database

    require_postgres()
    with fresh_database(POSTGRES_URL, prefix="lethe_test") as url:
        yield url


@contextmanager
def served(app, lifespan: str = "off") -> Iterator[int]:
    """``app`` behind a real uvicorn on a free port, in a thread; yields the port."""
    import threading
    import time

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           lifespan=lifespan))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
