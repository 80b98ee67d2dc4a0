"""What the container image relies on: its dependency list and `lethe health`."""

from __future__ import annotations

import http.server
import importlib.util
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
# Loaded from its path: docker/ is the image's build helpers, not a package (and "docker" is
# also the name of the Docker SDK for Python).
_spec = importlib.util.spec_from_file_location("lethe_image_requirements",
                                               ROOT / "docker" / "requirements.py")
_requirements = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_requirements)
runtime_requirements = _requirements.runtime_requirements


def test_the_image_installs_every_runtime_dependency_but_the_projects_own():
    requirements = runtime_requirements([ROOT / "pyproject.toml",
                                         ROOT / "client" / "pyproject.toml"])
    service = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    client = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())
    expected = [r for r in service if not r.startswith("lethe-unlearning-client")]
    expected += [r for r in client["project"]["dependencies"] if r not in expected]
    assert requirements == expected
    assert not any(r.startswith("lethe-unlearning") for r in requirements)
    assert any(r.startswith("torch") for r in requirements)


def test_a_requirement_is_matched_by_its_normalised_name(tmp_path):
    (tmp_path / "a.toml").write_text(
        '[project]\nname = "Lethe_Unlearning"\ndependencies = ["lethe.unlearning-client>=0.1", '
        '"numpy>=1.26", "psycopg[binary]>=3.1"]\n')
    (tmp_path / "b.toml").write_text(
        '[project]\nname = "lethe-unlearning-client"\ndependencies = ["numpy>=1.26"]\n')
    assert runtime_requirements([tmp_path / "a.toml", tmp_path / "b.toml"]) == [
        "numpy>=1.26", "psycopg[binary]>=3.1"]


class _Readyz(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 - the name http.server calls
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.end_headers()
        self.wfile.write(b'{"status": "ready"}')

    def log_message(self, *args):
        pass


@pytest.fixture
def readyz() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Readyz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _health(*args: str):
    from app.cli import cli

    return CliRunner().invoke(cli, ["health", *args])


def test_api_health_follows_readyz(readyz, monkeypatch):
    port = str(readyz.server_address[1])
    monkeypatch.setattr(_Readyz, "status", 200)
    result = _health("api", "--port", port)
    assert result.exit_code == 0, result.output
    monkeypatch.setattr(_Readyz, "status", 503)
    result = _health("api", "--port", port)
    assert result.exit_code == 1
    assert "503" in result.output


def test_api_health_fails_when_nothing_listens(readyz):
    port = str(readyz.server_address[1])
    readyz.shutdown()
    readyz.server_close()
    result = _health("api", "--port", port, "--timeout", "2")
    assert result.exit_code == 1
    assert "unhealthy" in result.output


def _answering(monkeypatch, nodes: set[str]) -> list:
    """Stand in for the broker's ping: the named nodes answer; returns what was asked."""
    from worker.celery_app import celery_app

    asked = []

    def ping(destination, timeout):
        asked.append(destination)
        return [{node: {"ok": "pong"}} for node in destination if node in nodes]

    monkeypatch.setattr(celery_app.control, "ping", ping)
    return asked


def test_worker_health_asks_this_hosts_node_only(configure, monkeypatch):
    import socket

    configure(broker_url="redis://127.0.0.1:1/0")
    default = f"celery@{socket.gethostname()}"  # no `lethe worker` runs here: Celery's own
    asked = _answering(monkeypatch, {default})
    result = _health("worker")
    assert result.exit_code == 0, result.output
    assert asked == [[default]]
    # Another worker answering on the same broker does not make this one healthy.
    _answering(monkeypatch, {"celery@elsewhere"})
    result = _health("worker", "--timeout", "0.1")
    assert result.exit_code == 1
    assert "did not answer" in result.output
    result = _health("worker", "--node", "celery@elsewhere")
    assert result.exit_code == 0, result.output


def test_workers_of_one_host_have_names_of_their_own_and_health_asks_each(configure,
                                                                          monkeypatch):
    import subprocess
    import sys

    from worker.nodes import announced, default_node_name, running_nodes

    home = configure(broker_url="redis://127.0.0.1:1/0")
    sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ours, theirs = default_node_name(), default_node_name(sibling.pid)
        assert ours != theirs and ours.split("@")[1] == theirs.split("@")[1]
        (home / "run").mkdir(parents=True, exist_ok=True)
        (home / "run" / f"worker-{sibling.pid}.node").write_text(theirs)
        (home / "run" / "worker-999999999.node").write_text("lethe-gone@host")  # dead
        with announced(home, ours):
            assert sorted(running_nodes(home)) == sorted([ours, theirs])
            asked = _answering(monkeypatch, {ours, theirs})
            assert _health("worker").exit_code == 0
            assert sorted(asked[0]) == sorted([ours, theirs])
            _answering(monkeypatch, {ours})  # the sibling hangs: the host is unhealthy
            result = _health("worker", "--timeout", "0.1")
            assert result.exit_code == 1 and theirs in result.output
        assert running_nodes(home) == [theirs]  # ours left with its worker
        assert not (home / "run" / "worker-999999999.node").exists()
    finally:
        sibling.kill()
        sibling.wait()


def test_worker_health_needs_a_broker(configure):
    configure()
    result = _health("worker")
    assert result.exit_code == 2
    assert "LETHE_BROKER_URL" in result.output


def test_health_knows_two_roles():
    assert _health("scheduler").exit_code == 2


def test_init_key_makes_the_receipt_key_once(configure, monkeypatch, tmp_path):
    import json

    from app.cli import cli
    from app.deletion_requests import receipts
    from tests.conftest import reset_caches

    key_file = tmp_path / "keys" / "receipt-key.pem"
    configure(receipt_key_file=str(key_file))
    first = CliRunner().invoke(cli, ["receipts", "init-key", "--json"])
    assert first.exit_code == 0, first.output
    made = json.loads(first.output)
    assert made["created"] is True and made["path"] == str(key_file)
    assert key_file.stat().st_mode & 0o077 == 0  # the private key is readable by its owner only
    reset_caches()  # another process: it reads the key, it does not make another
    again = CliRunner().invoke(cli, ["receipts", "init-key"])
    assert again.exit_code == 0, again.output
    assert again.output.splitlines()[-1] == made["key_id"]
    assert receipts.public_key_document()["key_id"] == made["key_id"]


def test_the_image_pins_the_torch_of_the_makefile():
    import re

    makefile = re.search(r"^TORCH_SPEC \?= *(\S+)$", (ROOT / "Makefile").read_text(), re.M)
    dockerfile = re.search(r"^ARG TORCH_SPEC=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert makefile and dockerfile
    assert dockerfile.group(1) == makefile.group(1)
