"""Starting and stopping the stacks the benchmark measures, as the operator would run them.

Each stack is ``lethe serve`` (and, with a broker, ``lethe worker`` processes) in subprocesses
on free loopback ports, with a fresh temporary ``LETHE_HOME`` as working directory (so no
``.env`` of the checkout leaks in) and every other ``LETHE_*`` variable removed: the service's
defaults, as a fresh install gets them. The PostgreSQL stack gets a database of its own,
dropped afterwards, and a Celery queue name of its own, so that other workers on the same
Redis never take its jobs.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from app.ops.bench.load import Endpoint

EMBEDDED, POSTGRES = "embedded", "postgres"
STACKS = (EMBEDDED, POSTGRES)
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0


class StackError(RuntimeError):
    """A stack did not start (its log's tail says why)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def lethe_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "app.cli", *args]


def clean_environment(home: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    env |= {"LETHE_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env |= {f"LETHE_{name.upper()}": value for name, value in settings.items()}
    return env


@dataclass
class Process:
    """A subprocess of the benchmark, its output in a log file."""

    name: str
    popen: subprocess.Popen
    log: Path

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def terminate(self) -> None:
        """SIGTERM: uvicorn's and Celery's graceful stop."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)

    def reap(self) -> None:
        """Wait for it to stop (then kill what is left of its process group)."""
        with suppress(subprocess.TimeoutExpired):
            self.popen.wait(STOP_TIMEOUT_S)
        # Celery's pool children share the group: none may outlive the benchmark.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()

    def stop(self) -> None:
        self.terminate()
        self.reap()


def stop_all(processes: list[Process]) -> None:
    """Stop them together: a Celery warm shutdown takes seconds each."""
    for process in processes:
        process.terminate()
    for process in processes:
        process.reap()


def spawn(name: str, command: list[str], env: dict[str, str], cwd: Path) -> Process:
    log = cwd / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        popen = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
    return Process(name, popen, log)


def run_lethe(env: dict[str, str], cwd: Path, *args: str) -> str:
    done = subprocess.run(lethe_command(*args), env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)
    if done.returncode != 0:
        raise StackError(f"lethe {' '.join(args)} failed: {done.stderr[-2000:]}")
    return done.stdout


def wait_until_ready(url: str, process: Process, path: str = "/readyz") -> None:
    """Until the API answers ``path`` with 200 (/readyz: its database and broker reachable,
    and in the embedded stack its in-process worker running)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise StackError(f"{process.name} exited ({process.popen.returncode}):\n"
                             f"{process.tail()}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise StackError(f"{process.name} not ready after {READY_TIMEOUT_S} s:\n{process.tail()}")


def wait_for_log_line(process: Process, marker: str) -> None:
    """Until ``marker`` shows in the process's log (Celery's "ready." line)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise StackError(f"{process.name} exited ({process.popen.returncode}):\n"
                             f"{process.tail()}")
        if marker in process.log.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise StackError(f"{process.name} not ready after {READY_TIMEOUT_S} s:\n{process.tail()}")


@dataclass
class Stack:
    """One running stack: its API's endpoint, a token, and the database URL it uses."""

    name: str
    home: Path
    env: dict[str, str]
    database_url: str
    endpoint: Endpoint | None = None
    tenant_id: str | None = None
    api: Process | None = None
    workers: list[Process] = field(default_factory=list)
    worker_threads: int | None = None  # each worker's LETHE_TORCH_THREADS
    others: list[Process] = field(default_factory=list)

    @property
    def has_celery(self) -> bool:
        return "LETHE_BROKER_URL" in self.env

    def start_api(self, workers: int = 0) -> None:
        """``lethe serve``, and ``workers`` Celery workers started beside it."""
        port = free_port()
        self.api = spawn("api", lethe_command("serve", "--host", "127.0.0.1", "--port",
                                              str(port)), self.env, self.home)
        started = [self._spawn_worker(max(1, (os.cpu_count() or 1) // workers))
                   for _ in range(workers)]
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url, self.api)  # the embedded database is migrated by then
        token = create_api_key(self.database_url, "bench")
        self.endpoint, self.tenant_id = Endpoint(url, token[0]), token[1]
        for worker in started:
            wait_for_log_line(worker, " ready.")

    def set_workers(self, count: int) -> None:
        """Run exactly ``count`` Celery workers of one process each (``lethe worker``), the
        host's cores shared among them (LETHE_TORCH_THREADS): workers on one host that each
        take every core slow each other down, as an operator's would."""
        threads = max(1, (os.cpu_count() or 1) // count)
        if len(self.workers) == count and self.worker_threads == threads:
            return  # a worker start costs seconds (torch's import): keep what fits
        stop_all(self.workers)
        self.workers.clear()
        started = [self._spawn_worker(threads) for _ in range(count)]
        for worker in started:
            wait_for_log_line(worker, " ready.")

    def _spawn_worker(self, torch_threads: int) -> Process:
        number = len(self.workers) + 1
        node = f"bench{number}-{secrets.token_hex(3)}@{socket.gethostname()}"
        self.worker_threads = torch_threads
        env = self.env | {"LETHE_TORCH_THREADS": str(torch_threads)}
        worker = spawn(f"worker-{number}", lethe_command(
            "worker", "--concurrency", "1", "--node", node, "--loglevel", "INFO"),
            env, self.home)
        self.workers.append(worker)
        return worker

    def start_floor(self) -> Endpoint:
        port = free_port()
        floor = spawn("floor", [sys.executable, "-m", "app.ops.bench.floor", "--port",
                                str(port), "--database-url", self.database_url],
                      self.env, self.home)
        self.others.append(floor)
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url, floor, path="/healthz")
        return Endpoint(url, self.endpoint.token)

    def stop_floor(self) -> None:
        stop_all(self.others)
        self.others.clear()

    def stop(self) -> None:
        stop_all([*self.others, *self.workers, *([self.api] if self.api else [])])
        self.others.clear()
        self.workers.clear()
        self.api = None


@contextmanager
def running_stack(name: str, postgres_admin_url: str, redis_url: str, keep_home: bool = False,
                  settings: dict[str, str] | None = None):
    """The stack ``name`` (embedded or postgres), started; stopped and removed on exit.
    ``settings``: Lethe settings over the defaults (e.g. ``{"torch_threads": "1"}``)."""
    home = Path(tempfile.mkdtemp(prefix=f"lethe-bench-{name}-"))
    settings = settings or {}
    try:
        if name == EMBEDDED:
            stack = Stack(name, home, clean_environment(home, **settings),
                          f"sqlite:///{home / 'lethe.db'}")
            with _started(stack):
                yield stack
        elif name == POSTGRES:
            queue = f"lethe-bench-{secrets.token_hex(4)}"
            with fresh_database(postgres_admin_url) as url, _queue_cleanup(redis_url, queue):
                env = clean_environment(home, **settings, database_url=url,
                                        broker_url=redis_url, queue_name=queue)
                run_lethe(env, home, "db", "upgrade")
                stack = Stack(name, home, env, url)
                with _started(stack):
                    yield stack
        else:
            raise ValueError(f"unknown stack {name!r}: {', '.join(STACKS)}")
    finally:
        if not keep_home:
            shutil.rmtree(home, ignore_errors=True)


@contextmanager
def _started(stack: Stack):
    try:
        stack.start_api(workers=1 if stack.has_celery else 0)
        yield stack
    finally:
        stack.stop()


def create_api_key(database_url: str, name: str) -> tuple[str, str]:
    """A new tenant's token and id, written straight into the stack's database (as `lethe
    apikey create` does, without a process of its own to start)."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from app.tenants.service import create_api_key as create

    engine = create_engine(database_url)
    try:
        with Session(engine) as db, db.begin():
            key, token = create(db, name)
            return token, key.tenant_id
    finally:
        engine.dispose()


@contextmanager
def fresh_database(admin_url: str, prefix: str = "lethe_bench"):
    """A new, empty PostgreSQL database on the server of ``admin_url``, dropped afterwards."""
    from sqlalchemy import create_engine, text

    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield f"{admin_url.rsplit('/', 1)[0]}/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def _queue_cleanup(redis_url: str, queue: str):
    """Remove the run's queues and bindings from Redis afterwards (its name is unique)."""
    try:
        yield
    finally:
        try:
            import redis

            client = redis.Redis.from_url(redis_url)
            for key in client.scan_iter(match=f"*{queue}*"):
                client.delete(key)
            client.close()
        except Exception:  # noqa: BLE001 - leftovers of a unique name harm no one
            pass
