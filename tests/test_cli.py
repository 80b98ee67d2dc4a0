"""The `lethe` command on top of the client: the README's quick start as a script, every
command's --json for scripts, names where ids go, failures as exit status 1 with the problem,
and the database commands' one argument style."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.services import fresh_postgres_database

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def lethe(live_server):
    """``lethe(*args)``: the command in-process, pointed at the live server."""
    from app.cli import cli

    runner = CliRunner()
    env = {"LETHE_URL": live_server.url, "LETHE_TOKEN": live_server.token}

    def run(*args: str, code: int = 0):
        result = runner.invoke(cli, [str(a) for a in args], env=env)
        assert result.exit_code == code, (args, result.output, result.exception)
        return result

    return run


def test_every_step_through_the_cli_with_json(lethe, tmp_path, digits_npz, digits_weights):
    (tmp_path / "digits.npz").write_bytes(digits_npz)
    (tmp_path / "mlp.safetensors").write_bytes(digits_weights)

    upload = lethe("datasets", "upload", tmp_path / "digits.npz", "--name", "digits")
    dataset_id = upload.stdout.splitlines()[-1]  # a creating command prints its id last
    assert dataset_id.startswith("ds_")
    model = json.loads(lethe("models", "register", tmp_path / "mlp.safetensors", "--dataset",
                             "digits", "--name", "digits-mlp", "--architecture", "mlp",
                             "--architecture-config", '{"hidden": [64]}', "--tag",
                             "team=vision", "--json").stdout)
    assert model["dataset_id"] == dataset_id and model["latest_version"] == 1

    ids = lethe("datasets", "samples", "digits", "--limit", "30", "--ids").stdout
    (tmp_path / "forget.txt").write_text(ids)
    assert len(ids.split()) == 30
    request = json.loads(lethe("forget", "digits-mlp", "--ids-file", tmp_path / "forget.txt",
                               "--method", "finetune", "--params", '{"epochs": 1}', "--wait",
                               "--json").stdout)
    assert request["status"] == "completed" and request["version_after"] == 2
    job = json.loads(lethe("jobs", "watch", request["job_id"], "--json").stdout)
    assert job["status"] == "succeeded"
    listed = json.loads(lethe("requests", "list", "--model", "digits-mlp", "--json").stdout)
    assert [r["id"] for r in listed] == [request["id"]]

    download = json.loads(lethe("versions", "download", "digits-mlp", "latest", "--out",
                                tmp_path / "v2.safetensors", "--json").stdout)
    assert download["version"] == 2 and Path(download["path"]).exists()
    assert [v["version"] for v in json.loads(
        lethe("versions", "list", "digits-mlp", "--json").stdout)] == [1, 2]

    lethe("receipts", "get", request["id"], "--out", tmp_path / "receipt.json")
    lethe("receipts", "key", "--out", tmp_path / "key.json")
    verdict = json.loads(lethe("receipts", "verify", tmp_path / "receipt.json", "--public-key",
                               tmp_path / "key.json", "--sample-ids", tmp_path / "forget.txt",
                               "--json").stdout)
    assert verdict["valid"] and verdict["receipt"]["request_id"] == request["id"]
    audit = json.loads(lethe("audit", "verify", "--anchor", tmp_path / "receipt.json",
                             "--json").stdout)
    assert audit["valid"] and audit["anchor_matches"]
    human = lethe("audit", "verify").stdout
    assert human.startswith("valid:")
    full = json.loads(lethe("audit", "verify", "--full", "--json").stdout)
    assert full["valid"] and full["full"] and full["verified_from_seq"] == 0
    assert "every event re-hashed" in lethe("audit", "verify", "--full").stdout


def test_failures_exit_1_with_the_problem(lethe, tmp_path, digits_npz, digits_weights):
    (tmp_path / "digits.npz").write_bytes(digits_npz)
    (tmp_path / "mlp.safetensors").write_bytes(digits_weights)
    lethe("datasets", "upload", tmp_path / "digits.npz")
    refused = lethe("models", "register", tmp_path / "mlp.safetensors", "--dataset", "digits",
                    "--json", code=1)
    problem = json.loads(refused.stdout)
    assert problem["status"] == 422 and "architecture" in problem["detail"]

    human = lethe("models", "get", "nobody", code=1)
    assert "no model has the id or name 'nobody'" in human.stderr
    missing = lethe("jobs", "get", "job_000000000000000000000000", code=1)
    assert missing.stderr.startswith("error: 404 Not Found")
    usage = lethe("forget", "m", code=2)
    assert "give --ids-file, --classes or --subject" in usage.output


def test_version():
    from app.cli import cli

    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("lethe ")
    assert "client" in result.stdout


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres",
                                                            marks=pytest.mark.postgres)])
def test_db_commands_take_the_revision_as_an_argument(backend, monkeypatch, tmp_path):
    from app.cli import cli
    from tests.conftest import reset_caches

    def run(*args: str) -> str:
        result = CliRunner().invoke(cli, ["db", *args, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["revision"]

    with fresh_postgres_database() if backend == "postgres" else _nothing() as url:
        monkeypatch.setenv("LETHE_HOME", str(tmp_path))
        monkeypatch.setenv("LETHE_DATABASE_URL", url or f"sqlite:///{tmp_path / 'db.sqlite'}")
        reset_caches()
        try:
            assert run("upgrade") == "0006"
            assert run("downgrade") == "0005"
            assert run("downgrade", "base") == "base"
            assert run("upgrade", "0002") == "0002"
            assert run("upgrade", "--revision", "0003") == "0003"  # the old spelling
            assert run("upgrade", "head") == "0006"
        finally:
            reset_caches()


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *_):
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _quickstart(port: int, timeout: float, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "scripts/quickstart.sh"], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout,
                          env=os.environ | {"PORT": str(port), **env})


@pytest.mark.slow
def test_the_quickstart_script_succeeds_and_exits_0():
    done = _quickstart(_free_port(), 300, EPOCHS="3")
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "matches its ETag" in done.stdout
    assert "valid: request dr_" in done.stdout and "the anchor matches" in done.stdout


def test_the_quickstart_script_fails_fast_when_its_port_is_taken():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        started = time.monotonic()
        done = _quickstart(taken.getsockname()[1], 120)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "address already in use" in done.stderr and "exited before it was ready" in done.stderr
    assert time.monotonic() - started < 60


def test_serve_refuses_several_processes_without_a_broker(configure):
    from app.cli import cli

    configure()
    result = CliRunner().invoke(cli, ["serve", "--processes", "2"])
    assert result.exit_code != 0 and "LETHE_BROKER_URL" in result.output


@pytest.mark.postgres
@pytest.mark.redis
def test_serve_runs_several_api_processes_on_one_port(configure, postgres_url, tmp_path):
    """Two uvicorn processes behind one port, both answering: the API scales past one core."""
    import httpx

    from tests.services import REDIS_URL, require_redis

    require_redis()
    home = configure(database_url=postgres_url, broker_url=REDIS_URL)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "LETHE_HOME": str(home)}
    server = subprocess.Popen([str(ROOT / ".venv/bin/lethe"), "serve", "--port", str(port),
                               "--processes", "2"], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.2)
        children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
        assert len(children) >= 2, children  # uvicorn's supervisor and its two workers
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    assert "2 processes" in output
