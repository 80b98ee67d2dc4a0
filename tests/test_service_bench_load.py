"""The service benchmark's load generator against a local HTTP server whose answers take a
set time: what it counts, and the rate it reports when requests outlast its window."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app.ops.bench.load import Endpoint, poll_requests, run_load


def slow_server(delay_s: float) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the load generator expects

        def do_GET(self) -> None:
            time.sleep(delay_s)
            body = b'{"status": "queued"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


@pytest.fixture
def endpoint(request) -> Iterator[Endpoint]:
    server = slow_server(request.param)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Endpoint(f"http://127.0.0.1:{server.server_address[1]}", "token")
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("endpoint", [0.05], indirect=True)
def test_rate_counts_requests_started_in_the_window_over_the_time_they_took(endpoint):
    result = run_load(endpoint, poll_requests("job"), concurrency=2, seconds=0.5,
                      warmup=0.1).summary()
    assert result["ok"] == result["requests"] > 0 and result["errors"] == 0
    # Each client answers about every 0.05 s: some 20 requests each in a 0.5-s window.
    assert 0.5 <= result["seconds"] < 0.7
    assert result["per_second"] == pytest.approx(result["ok"] / result["seconds"], rel=0.01)
    assert "note" not in result


@pytest.mark.parametrize("endpoint", [0.8], indirect=True)
def test_requests_that_outlast_the_window_are_reported_not_read_as_zero_throughput(endpoint):
    result = run_load(endpoint, poll_requests("job"), concurrency=2, seconds=0.2,
                      warmup=0.1).summary()
    assert result["requests"] == 0
    assert "no request started in the 0.2-s window" in result["note"]
