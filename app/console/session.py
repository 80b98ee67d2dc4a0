"""The console's sign-in: an API key exchanged for a signed, HttpOnly session cookie.

The cookie holds the key's id, when it was issued, a random nonce and an HMAC-SHA256 of the
three under a server-side secret; nothing in it is a credential of its own. Every request
looks the key up again, so revoking the key ends its console sessions at once. State-changing
forms carry a CSRF token derived from the session's nonce, and their Origin must be ours.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import Request, Response
from sqlalchemy.orm import Session

from app.core.config import get_settings
from app.tenants.service import Principal, authenticate
from app.tenants.tables import ApiKey

SESSION_COOKIE = "lethe_console"
SIGN_IN_COOKIE = "lethe_console_sign_in"  # the sign-in form's own CSRF nonce
COOKIE_PATH = "/ui"
SECRET_FILE = "console-secret"


class SignInRequired(Exception):
    """No valid session: the console answers with a redirect to the sign-in page."""


class CsrfRefused(Exception):
    """A state-changing form without a valid token, or from another origin."""


@dataclass(frozen=True)
class ConsoleSession:
    principal: Principal
    key_name: str
    csrf_token: str


def _create_secret(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # O_EXCL: of two processes starting at once, one secret wins and both use it
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(48))


def secret() -> bytes:
    """``LETHE_CONSOLE_SECRET``, else the one kept in ``$LETHE_HOME/console-secret``."""
    settings = get_settings()
    if settings.console_secret:
        return settings.console_secret.encode()
    return _secret_in(settings.home.resolve())


@lru_cache
def _secret_in(home: Path) -> bytes:
    path = home / SECRET_FILE
    if not path.exists():
        _create_secret(path)
    for _ in range(50):  # another process may have created the file and not yet written it
        if text := path.read_text().strip():
            return text.encode()
        time.sleep(0.02)
    raise RuntimeError(f"{path} is empty: delete it, or set LETHE_CONSOLE_SECRET")


def _mac(purpose: str, text: str) -> str:
    return hmac.new(secret(), f"{purpose}:{text}".encode(), hashlib.sha256).hexdigest()


def _cookie_options(request: Request) -> dict:
    return {"httponly": True, "samesite": "strict", "path": COOKIE_PATH,
            "secure": request.url.scheme == "https"}


def start_session(db: Session, token: str, request: Request, response: Response) -> bool:
    """Set the session cookie if ``token`` is a live API key; says whether it was."""
    principal = authenticate(db, token.strip())
    if principal is None:
        return False
    fields = f"{principal.key_id}:{int(time.time())}:{secrets.token_urlsafe(16)}"
    response.set_cookie(SESSION_COOKIE, f"{fields}:{_mac('session', fields)}",
                        max_age=int(get_settings().console_session_hours * 3600),
                        **_cookie_options(request))
    response.delete_cookie(SIGN_IN_COOKIE, path=COOKIE_PATH)
    return True


def end_session(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH)


def read_session(db: Session, request: Request) -> ConsoleSession | None:
    """The signed-in key, or None: no cookie, a forged or expired one, a revoked key."""
    parts = request.cookies.get(SESSION_COOKIE, "").split(":")
    if len(parts) != 4:
        return None
    key_id, issued, nonce, mac = parts
    fields = f"{key_id}:{issued}:{nonce}"
    if not hmac.compare_digest(mac, _mac("session", fields)) or not issued.isdigit():
        return None
    if time.time() - int(issued) > get_settings().console_session_hours * 3600:
        return None
    key = db.get(ApiKey, key_id)
    if key is None or key.revoked_at is not None:
        return None
    return ConsoleSession(Principal(key.tenant_id, key.id), key.name, _mac("csrf", nonce))


def sign_in_form_token(request: Request, response: Response) -> str:
    """The sign-in form's token: the HMAC of a nonce kept in a cookie of its own (so a page
    of another site cannot sign a browser in under the attacker's key)."""
    nonce = request.cookies.get(SIGN_IN_COOKIE) or secrets.token_urlsafe(16)
    response.set_cookie(SIGN_IN_COOKIE, nonce, max_age=3600, **_cookie_options(request))
    return _mac("sign-in", nonce)


def check_sign_in_form(request: Request, token: str) -> None:
    nonce = request.cookies.get(SIGN_IN_COOKIE, "")
    if not nonce or not hmac.compare_digest(token, _mac("sign-in", nonce)):
        raise CsrfRefused("the sign-in form expired; reload the page and try again")
    check_origin(request)


def check_form(request: Request, session: ConsoleSession, token: str) -> None:
    if not hmac.compare_digest(token, session.csrf_token):
        raise CsrfRefused("this form's security token is missing or stale; reload the page")
    check_origin(request)


def check_origin(request: Request) -> None:
    """Browsers send Origin with every form POST; when present it must be this console's.
    (Referer stands in for it where a browser leaves Origin out.)"""
    claimed = request.headers.get("origin") or request.headers.get("referer")
    if claimed is None:
        return
    parts = urlsplit(claimed)
    if claimed == "null" or (parts.scheme, parts.netloc) != (request.url.scheme,
                                                             request.url.netloc):
        raise CsrfRefused("this form was sent from another site")
