"""Rendering for the console: templates, the route class that turns errors into pages, and the
headers every console answer carries."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates

from app.console.session import ConsoleSession, CsrfRefused, SignInRequired
from app.core.db import utcnow
from app.core.errors import PROBLEM_JSON, Problem, invalid

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
HOME = "/ui/requests"
SECURITY_HEADERS = {
    # Every script, style and image is the console's own; nothing may frame it.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                               "script-src 'self'; form-action 'self'; frame-ancestors 'none'; "
                               "base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def time_left(deadline: datetime, now: datetime) -> str:
    """``3 d 4 h left`` or ``overdue by 2 h 5 min``: the deadline in words."""
    remaining = (deadline - now).total_seconds()
    span = int(abs(remaining))
    days, hours, minutes = span // 86400, span % 86400 // 3600, span % 3600 // 60
    if days:
        text = f"{days} d {hours} h"
    elif hours:
        text = f"{hours} h {minutes} min"
    else:
        text = f"{minutes} min" if minutes else "under a minute"
    return f"{text} left" if remaining >= 0 else f"overdue by {text}"


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "—"


templates.env.filters["when"] = when
templates.env.globals["time_left"] = time_left


def page(request: Request, name: str, session: ConsoleSession | None, status: int = 200,
         **context: Any) -> Response:
    return templates.TemplateResponse(request, name,
                                      {"session": session, "now": utcnow(), **context},
                                      status_code=status)


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a console path of this site, never another site."""
    if not target or "\\" in target:
        return HOME
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/ui/") or \
            target.startswith("//"):
        return HOME
    return target


def sign_in_url(request: Request) -> str:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return f"/ui/sign-in?next={quote(safe_next(target), safe='')}"


def _error(request: Request, json: bool, status: int, title: str, detail: str,
           body: dict | None = None) -> Response:
    body = body or {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if json:
        return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)
    return page(request, "error.html", None, status, problem=body)


def _validation(exc: RequestValidationError) -> Problem:
    detail = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())[1:])}: {e.get('msg')}"
                       for e in exc.errors())
    return invalid(detail or "invalid request")


class ConsoleRoute(APIRoute):
    """Answers a console route's failures as pages (or, for its JSON routes, problems): no
    session is a redirect to sign-in, a refused form a 403, a service's problem its page."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()
        json = self.path.endswith(".json")

        async def guarded(request: Request) -> Response:
            try:
                response = await handler(request)
            except SignInRequired:
                response = (_error(request, True, 401, "Unauthorized", "sign in first") if json
                            else RedirectResponse(sign_in_url(request), status_code=303))
            except CsrfRefused as exc:
                response = _error(request, json, 403, "Forbidden", str(exc))
            except RequestValidationError as exc:
                problem = _validation(exc)
                response = _error(request, json, problem.status, problem.title, problem.detail,
                                  problem.body(request.url.path))
            except Problem as exc:
                response = _error(request, json, exc.status, exc.title, exc.detail,
                                  exc.body(request.url.path))
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return guarded
