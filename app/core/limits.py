"""Caps the size of request bodies before anything parses them."""

from __future__ import annotations

from app.core.errors import Problem, problem_response

DISCONNECT = {"type": "http.disconnect"}


class RequestSizeLimit:
    """Pure ASGI middleware: 413 on a declared or streamed body above ``max_bytes``.

    A declared ``Content-Length`` is judged before the app runs. A chunked body is counted as
    it streams: the chunk that crosses the limit is never handed on; the 413 goes out at once
    and the app is told the client left. Raising instead would not do: FastAPI turns any error
    while it reads a body into a 400.
    """

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._reject(scope, receive, send)
        seen, started, rejected = 0, False, False

        async def counting_receive():
            nonlocal seen, rejected
            if rejected:
                return DISCONNECT
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    rejected = True
                    if not started:
                        await self._reject(scope, receive, send)
                    return DISCONNECT
            return message

        async def guarded_send(message):
            nonlocal started
            if rejected:
                return  # the 413 has been sent; whatever the app says after it is dropped
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not rejected:
                raise  # after a 413 the app's complaints about the lost body are moot

    async def _reject(self, scope, receive, send):
        problem = Problem(413, f"request body larger than {self.max_bytes} bytes",
                          slug="request-too-large")
        await problem_response(problem)(scope, receive, send)
