"""Worker node names: distinct for every worker on a host, and findable by its health check.

Celery names every worker ``celery@HOSTNAME`` unless told otherwise, so two workers on one host
answered to one name: broadcasts (ping, inspect) mixed up their replies and each job recorded
the same worker. A worker started by ``lethe worker`` is ``lethe-PID@HOSTNAME`` instead, and
leaves its name in ``$LETHE_HOME/run/`` for as long as it runs, where ``lethe health worker``
(another process on the same host or in the same container) finds whom to ask.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def default_node_name(pid: int | None = None) -> str:
    return f"lethe-{pid or os.getpid()}@{socket.gethostname()}"


def _node_dir(home: Path) -> Path:
    return home / "run"


@contextmanager
def announced(home: Path, node: str) -> Iterator[None]:
    """Leave ``node`` in the host's run folder while the block (the worker) runs."""
    folder = _node_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"worker-{os.getpid()}.node"
    path.write_text(node)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, but alive
    return True


def running_nodes(home: Path) -> list[str]:
    """Names of the workers of this host that are still running (files of dead ones go)."""
    names = []
    for path in sorted(_node_dir(home).glob("worker-*.node")):
        try:
            pid = int(path.stem.removeprefix("worker-"))
        except ValueError:
            continue
        if _alive(pid):
            names.append(path.read_text().strip())
        else:
            path.unlink(missing_ok=True)
    return names
