"""A TCP proxy in front of a local server that misbehaves on cue, for the client's tests.

Every connection is forwarded byte for byte to the upstream port, except that a :class:`Fault`
whose pattern matches a request (its request line) fires once:

- ``drop``: the request reaches the server, which does the work and answers; the answer never
  reaches the client, whose connection is closed (a connection lost at the worst moment).
- ``cut``: the first ``after`` bytes of the answer reach the client, then the connection is
  closed (an interrupted download).
- ``status``: the proxy itself answers ``503`` (with ``Retry-After: 0``) and the request never
  reaches the server (a restarting service or an overloaded balancer).

It also keeps the head of every request it saw, to check the headers a client sent.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from dataclasses import dataclass, field

HEAD_END = b"\r\n\r\n"


@dataclass
class Fault:
    kind: str  # "drop", "cut" or "status"
    pattern: str  # a regex matched against the request line, e.g. "^POST /v1/models/"
    after: int = 0  # for "cut": bytes of the response let through
    status: int = 503
    fired: int = 0


@dataclass
class _Connection:
    client: socket.socket
    upstream: socket.socket
    fault: Fault | None = None  # armed for the response now coming
    passed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class FaultyProxy:
    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.faults: list[Fault] = []
        self.heads: list[str] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)  # so the accept loop sees the stop flag
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._listener.close()
        self._thread.join(timeout=5)

    def add(self, kind: str, pattern: str, **options) -> Fault:
        fault = Fault(kind, pattern, **options)
        self.faults.append(fault)
        return fault

    def requests(self, pattern: str) -> list[str]:
        """The heads of the requests whose request line matches ``pattern``."""
        return [h for h in self.heads if re.search(pattern, h.split("\n", 1)[0])]

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            connection = _Connection(client, upstream)
            threading.Thread(target=self._requests, args=(connection,), daemon=True).start()
            threading.Thread(target=self._responses, args=(connection,), daemon=True).start()

    def _take_fault(self, request_line: str) -> Fault | None:
        for fault in self.faults:
            if not fault.fired and re.search(fault.pattern, request_line):
                fault.fired += 1
                return fault
        return None

    def _requests(self, c: _Connection) -> None:
        """Client to server; a request line that matches a fault arms it for its answer."""
        buffer, body_left = b"", 0
        try:
            while data := c.client.recv(65536):
                buffer += data
                while True:
                    if body_left:  # bodies are skipped by their Content-Length
                        skipped = min(body_left, len(buffer))
                        buffer, body_left = buffer[skipped:], body_left - skipped
                        if body_left:
                            break
                    if HEAD_END not in buffer:
                        break
                    head, _, buffer = buffer.partition(HEAD_END)
                    text = head.decode("latin-1")
                    self.heads.append(text.replace("\r\n", "\n"))
                    length = re.search(r"(?im)^content-length:\s*(\d+)", text)
                    body_left = int(length.group(1)) if length else 0
                    fault = self._take_fault(text.split("\r\n", 1)[0])
                    if fault is not None and fault.kind == "status":
                        c.client.sendall(
                            f"HTTP/1.1 {fault.status} Service Unavailable\r\nRetry-After: 0\r\n"
                            "Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
                        c.close()
                        return
                    if fault is not None:
                        with c.lock:
                            c.fault, c.passed = fault, 0
                c.upstream.sendall(data)
        except OSError:
            pass
        finally:
            c.close()

    def _responses(self, c: _Connection) -> None:
        """Server to client, dropping or cutting the answer to an armed request."""
        try:
            while data := c.upstream.recv(65536):
                with c.lock:
                    fault = c.fault
                if fault is not None and fault.kind == "drop":
                    return
                if fault is not None and fault.kind == "cut":
                    room = fault.after - c.passed
                    c.client.sendall(data[:room])
                    c.passed += min(room, len(data))
                    if c.passed >= fault.after:
                        return
                    continue
                c.client.sendall(data)
        except OSError:
            pass
        finally:
            c.close()
