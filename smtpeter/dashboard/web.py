"""What every dashboard page shares: sessions, CSRF, security headers, templates, errors.

A log-in makes a server-side session (``Storage.create_dashboard_session``):
the cookie carries a random secret (only its hash is stored), ``HttpOnly``,
``SameSite=Strict``, ``Secure`` when the request came over HTTPS or the
public URL is https, limited to ``/dashboard``, ending after
``SESSION_SECONDS``. Every form carries the session's CSRF token and a POST
without it (compared in constant time) is refused with 403; the log-in form
itself is protected by a double-submit cookie. Every page is scoped to the
session's account as the API is: another account's message is the same 404
page as one that does not exist. Pages come with a strict
Content-Security-Policy: our own stylesheet and script only, no inline code,
no third-party anything; customer HTML is shown only in a sandboxed frame.
"""

from __future__ import annotations

import functools
import hmac
import secrets
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from twisted.internet import defer
from twisted.logger import Logger

from smtpeter.storage import NotFound, StorageUnavailable
from smtpeter.storage.dashboard import DashboardSession

if TYPE_CHECKING:
    from smtpeter.ingress.http.site import API

log = Logger()

COOKIE = b"smtpeter_dashboard"
LOGIN_COOKIE = b"smtpeter_login"  # the log-in form's double-submit CSRF token
SESSION_SECONDS = 12 * 3600.0
MAX_FORM = 64 * 1024
PAGE_CSP = (b"default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
            b"frame-src 'self'; form-action 'self'; frame-ancestors 'self'; base-uri 'none'")
STATIC = Path(__file__).parent / "static"
_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
    autoescape=True, trim_blocks=True, lstrip_blocks=True)


class Forbidden(Exception):
    """A form without the session's CSRF token (or another refusal)."""


class Redirect(Exception):
    """Answer with a 303 to ``location`` (not an error)."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


@dataclass(frozen=True)
class Visitor:
    """Who is looking: the session's account (None for an operator) and its CSRF token."""

    account_id: str | None
    admin: bool
    csrf: str
    name: str = ""


def security_headers(request: Any) -> None:
    request.setHeader(b"content-security-policy", PAGE_CSP)
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"x-frame-options", b"SAMEORIGIN")
    request.setHeader(b"referrer-policy", b"no-referrer")
    request.setHeader(b"cache-control", b"no-store")


def render(request: Any, template: str, status: int = 200, **values: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    return _templates.get_template(template).render(**values).encode("utf-8")


def secure(api: API, request: Any) -> bool:
    return bool(request.isSecure()) or api.config.public_url.startswith("https:")


def set_cookie(api: API, request: Any, name: bytes, value: str, max_age: int) -> None:
    flags = "; Secure" if secure(api, request) else ""
    request.setHeader(b"set-cookie", f"{name.decode()}={value}; Path=/dashboard; Max-Age={max_age}; "
                                     f"HttpOnly; SameSite=Strict{flags}".encode())


def cookie(request: Any, name: bytes) -> str:
    value = request.getCookie(name)
    return value.decode("ascii", "replace") if value else ""


def form(request: Any) -> dict[str, str]:
    """A urlencoded form's fields (first value of each)."""
    request.content.seek(0)
    body = request.content.read(MAX_FORM + 1)
    if len(body) > MAX_FORM:
        raise Forbidden("form too large")
    try:
        parsed = urllib.parse.parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=200)
    except (UnicodeDecodeError, ValueError):
        raise Forbidden("unreadable form") from None
    return {name: values[0] for name, values in parsed.items()}


def same_token(offered: str, expected: str) -> bool:
    return bool(offered) and bool(expected) and hmac.compare_digest(offered.encode(), expected.encode())


async def visitor(api: API, request: Any) -> Visitor | None:
    secret = cookie(request, COOKIE)
    if not secret:
        return None
    session: DashboardSession | None = await api.storage.dashboard_session(secret)
    if session is None:
        return None
    name = ""
    if session.account_id is not None:
        try:
            name = (await api.storage.account(session.account_id)).name
        except NotFound:
            return None
    return Visitor(session.account_id, session.admin, session.csrf, name)


async def start_session(api: API, request: Any, account_id: str | None, admin: bool, credential: str) -> None:
    secret, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
    await api.storage.create_dashboard_session(secret, account_id, admin, csrf, SESSION_SECONDS, credential)
    set_cookie(api, request, COOKIE, secret, int(SESSION_SECONDS))


def page(*, admin: bool = False, public: bool = False) -> Callable:
    """A dashboard page: security headers, the visitor (log-in page if none), CSRF on POST, and
    errors as HTML pages. ``admin`` pages need an operator's session; ``public`` ones none."""

    def decorate(handler: Callable) -> Callable:
        @functools.wraps(handler)
        async def wrapped(api: API, request: Any, *args: Any, **kwargs: Any) -> Any:
            security_headers(request)
            try:
                who = None if public else await visitor(api, request)
                if not public:
                    if who is None:
                        raise Redirect("/dashboard/login")
                    if admin and not who.admin:
                        raise NotFound("not an operator")
                    if not admin and who.account_id is None:
                        raise Redirect("/dashboard/operator")
                    if request.method == b"POST" and not same_token(form(request).get("csrf", ""), who.csrf):
                        raise Forbidden("missing or wrong CSRF token")
                return await handler(api, request, who, *args, **kwargs)
            except Redirect as answer:
                request.setResponseCode(303)
                request.setHeader(b"location", answer.location.encode())
                return b""
            except NotFound:
                return render(request, "error.html", 404, title="Not found", visitor=None,
                              text="There is nothing here, or it is not yours to see.")
            except Forbidden as refusal:
                return render(request, "error.html", 403, title="Refused", visitor=None,
                              text=f"This request was refused: {refusal}. Reload the page and try again.")
            except StorageUnavailable:
                return render(request, "error.html", 503, title="Try again", visitor=None,
                              text="The database is not available right now. Nothing was changed.")
            except defer.CancelledError:
                return b""
            except Exception:
                log.failure("dashboard {path} failed", path=request.path)
                return render(request, "error.html", 500, title="Error", visitor=None,
                              text="Something went wrong on our side. Nothing was changed.")

        return wrapped

    return decorate
