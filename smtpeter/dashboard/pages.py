"""The customer's dashboard pages: log in and out, the overview with its chart, messages.

Klein names a route by its function: every function here starts with ``dashboard_`` so that no
name meets one of the API's.

Each page reads what the other stages record (storage, the event counts of
``events/statistics.py``) and writes nothing but through the same calls the
REST API makes. Routes register on the API's Klein app (``routing.app``).
"""

from __future__ import annotations

import datetime
import email
import email.policy
import secrets
from typing import TYPE_CHECKING, Any

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin

from smtpeter.dashboard import charts
from smtpeter.dashboard.operator import check_admin_login  # the operator's pages too
from smtpeter.dashboard.web import (
    COOKIE,
    LOGIN_COOKIE,
    STATIC,
    Forbidden,
    Redirect,
    Visitor,
    cookie,
    form,
    page,
    render,
    same_token,
    security_headers,
    set_cookie,
    start_session,
)
from smtpeter.events.logfiles import time_text
from smtpeter.events.statistics import SERIES
from smtpeter.ids import is_id
from smtpeter.ingress.http.routing import app
from smtpeter.ingress.smtp.auth import LoginChecker
from smtpeter.ingress.submission import Refused
from smtpeter.storage import NotFound
from smtpeter.storage.dashboard import (
    ADMIN_TOKEN_CREDENTIAL,
    admin_credential,
    login_credential,
    token_credential,
)

if TYPE_CHECKING:
    from smtpeter.ingress.http.site import API

# The chart's periods: (label, length, bucket), in seconds.
PERIODS = {"hour": ("Last hour", 3600, 60), "day": ("Last 24 hours", 86400, 3600),
           "month": ("Last 30 days", 30 * 86400, 86400)}
# What the overview charts (the customer's mail: not warnings, not unsubscribes).
CHARTED = ("accepted", "delivered", "deferred", "failed", "bounced", "opened", "clicked")
_STATIC_TYPES = {".css": b"text/css; charset=utf-8", ".js": b"text/javascript; charset=utf-8",
                 ".svg": b"image/svg+xml"}


@app.route("/dashboard", methods=["GET"])
@page()
async def dashboard_home(api: API, request: Any, who: Visitor) -> bytes:
    raise Redirect("/dashboard/overview")


@app.route("/dashboard/static/<name>", methods=["GET"])
async def dashboard_static(api: API, request: Any, name: str) -> bytes:
    security_headers(request)
    path = STATIC / name
    kind = _STATIC_TYPES.get(path.suffix)
    if kind is None or path.parent != STATIC or not path.is_file():
        request.setResponseCode(404)
        return b"not found"
    request.setHeader(b"content-type", kind)
    request.setHeader(b"cache-control", b"max-age=3600")
    return path.read_bytes()


# -- logging in and out ------------------------------------------------------------------------

def _login_page(api: API, request: Any, status: int = 200, problem: str = "") -> bytes:
    token = cookie(request, LOGIN_COOKIE) or secrets.token_urlsafe(24)
    set_cookie(api, request, LOGIN_COOKIE, token, 3600)
    return render(request, "login.html", status, title="Log in", visitor=None, csrf=token, problem=problem)


@app.route("/dashboard/login", methods=["GET"])
@page(public=True)
async def dashboard_login_form(api: API, request: Any, who: None) -> bytes:
    return _login_page(api, request)


@app.route("/dashboard/login", methods=["POST"])
@page(public=True)
async def dashboard_login(api: API, request: Any, who: None) -> bytes:
    fields = form(request)
    if not same_token(fields.get("csrf", ""), cookie(request, LOGIN_COOKIE)):
        raise Forbidden("missing or wrong CSRF token")
    client = request.getClientAddress().host
    token, username, password = (fields.get(k, "").strip() for k in ("token", "username", "password"))
    key = username or "token"
    refusal = api.dashboard_throttle.start(client, key)
    if refusal is not None:
        return _login_page(api, request, 429, "Too many failed attempts; try again later.")
    account_id, admin, credential = await _check(api, token, username, password)
    api.dashboard_throttle.finish(client, key, account_id is not None or admin)
    if account_id is None and not admin:
        return _login_page(api, request, 401,
                           "That did not work: check the token, or the username and password.")
    await start_session(api, request, account_id, admin, credential)
    raise Redirect("/dashboard/operator" if admin else "/dashboard/overview")


async def _check(api: API, token: str, username: str, password: str) -> tuple[str | None, bool, str]:
    """(account, is operator, credential) for an API token, the operator token, an admin login or an
    SMTP login; the account None and not an operator when none of them is right."""
    admin_token = api.config.http.admin_token
    if token and admin_token and same_token(token, admin_token):
        return None, True, ADMIN_TOKEN_CREDENTIAL
    if token:
        return await api.storage.account_for_token(token), False, token_credential(token)
    if username and password:
        if await check_admin_login(api, username, password):
            return None, True, admin_credential(username)
        try:
            name = await LoginChecker(api.storage).requestAvatarId(
                UsernamePassword(username.encode(), password.encode()))
        except (UnauthorizedLogin, UnicodeEncodeError):
            return None, False, ""
        found = await api.storage.smtp_login(name)
        return (found.account_id if found else None), False, login_credential(name)
    return None, False, ""


@app.route("/dashboard/logout", methods=["POST"])
@page()
async def dashboard_logout(api: API, request: Any, who: Visitor) -> bytes:
    await api.storage.end_dashboard_session(cookie(request, COOKIE))
    set_cookie(api, request, COOKIE, "", 0)
    raise Redirect("/dashboard/login")


# -- the overview --------------------------------------------------------------------------------

def chosen_period(request: Any) -> str:
    """The ``period`` the page asks for: one of PERIODS (a day when it names none)."""
    period = request.args.get(b"period", [b"day"])[0].decode("ascii", "replace")
    return period if period in PERIODS else "day"


def bucket_starts(period: str, now: float) -> list[int]:
    """The starts of the period's buckets, the last one holding ``now``."""
    _, length, bucket = PERIODS[period]
    end = (int(now) // bucket + 1) * bucket
    return list(range(end - length, end, bucket))


@app.route("/dashboard/overview", methods=["GET"])
@page()
async def dashboard_overview(api: API, request: Any, who: Visitor) -> bytes:
    period = chosen_period(request)
    bots = request.args.get(b"bots", [b"0"])[0] == b"1"
    label, _, bucket = PERIODS[period]
    starts = bucket_starts(period, api.clock.seconds())
    start, end = starts[0], starts[-1] + bucket
    found = await api.storage.event_counts(who.account_id, start, end, bucket, bots)
    series = {name: [0] * len(starts) for name in CHARTED}
    for moment, name, count in found:
        if name in series and start <= moment < end:
            series[name][(moment - start) // bucket] += count
    totals = {name: sum(values) for name, values in series.items()}
    chart = charts.line_chart(starts, bucket, series, f"{label}: messages by what happened to them")
    return render(request, "overview.html", title="Overview", visitor=who, period=period, periods=PERIODS,
                  bots=bots, totals=totals, chart=chart, series_names=list(SERIES.values()))


# -- messages ------------------------------------------------------------------------------------

def _day_range(text: str) -> tuple[float | None, float | None]:
    try:
        day = datetime.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=datetime.UTC)
    except ValueError:
        return None, None
    return day.timestamp(), day.timestamp() + 86400


@app.route("/dashboard/messages", methods=["GET"])
@page()
async def dashboard_messages(api: API, request: Any, who: Visitor) -> bytes:
    def arg(name: str) -> str:
        return request.args.get(name.encode(), [b""])[0].decode("utf-8", "replace").strip()[:320]

    message_id, address, tag, date = arg("id"), arg("recipient"), arg("tag"), arg("date")
    if message_id:
        if is_id(message_id.lower()):
            raise Redirect(f"/dashboard/messages/{message_id.lower()}")
        raise NotFound("not a message id")
    since, until = _day_range(date)
    found = await api.storage.search_messages(who.account_id, address=address, tag=tag, since=since,
                                              until=until, limit=200)
    rows = [{"id": r.id, "address": r.address, "state": r.state, "created": time_text(r.created),
             "attempts": r.attempts, "last": f"{r.last_code or ''} {r.last_description or ''}".strip()}
            for r in found]
    return render(request, "messages.html", title="Messages", visitor=who, rows=rows,
                  query={"recipient": address, "tag": tag, "date": date})


async def _message(api: API, who: Visitor, message_id: str) -> tuple[Any, Any]:
    if not is_id(message_id):
        raise NotFound(message_id)
    recipient = await api.storage.recipient(message_id, who.account_id)
    stored = await api.storage.message_content(message_id)
    return recipient, stored


def _parts(mime: bytes) -> tuple[list[tuple[str, str]], str, bool]:
    """The headers, the first text/plain part, and whether there is an HTML part."""
    parsed = email.message_from_bytes(mime, policy=email.policy.compat32)
    headers = [(name, str(value)) for name, value in parsed.items()]
    text, html = "", False
    for part in parsed.walk():
        kind = part.get_content_type()
        if kind == "text/plain" and not text and not part.get_filename():
            payload = part.get_payload(decode=True) or b""
            text = payload.decode(part.get_content_charset() or "utf-8", "replace")
        elif kind == "text/html":
            html = True
    return headers, text, html


@app.route("/dashboard/messages/<message_id>", methods=["GET"])
@page()
async def dashboard_message(api: API, request: Any, who: Visitor, message_id: str) -> bytes:
    recipient, stored = await _message(api, who, message_id)
    events = await api.storage.events(message_id, who.account_id)
    timeline = [{"time": time_text(e.time), "type": e.type, "data": e.data} for e in events]
    headers, text, html = await api.in_thread(_parts, bytes(stored.mime))
    return render(request, "message.html", title=f"Message {message_id}", visitor=who, recipient=recipient,
                  message=stored, timeline=timeline, headers=headers, text=text, html=html,
                  resent=request.args.get(b"resent", [b""])[0].decode("ascii", "replace"))


@app.route("/dashboard/messages/<message_id>/html", methods=["GET"])
@page()
async def dashboard_message_html(api: API, request: Any, who: Visitor, message_id: str) -> bytes:
    """The message's HTML for the sandboxed frame: no script runs, nothing is loaded."""
    _, stored = await _message(api, who, message_id)
    parsed = email.message_from_bytes(bytes(stored.mime), policy=email.policy.compat32)
    for part in parsed.walk():
        if part.get_content_type() == "text/html":
            request.setHeader(b"content-security-policy", b"default-src 'none'; style-src 'unsafe-inline'; "
                                                          b"img-src data:; sandbox")
            request.setHeader(b"content-type", f"text/html; charset={part.get_content_charset() or 'utf-8'}"
                              .encode("ascii", "replace"))
            return part.get_payload(decode=True) or b""
    raise NotFound("no HTML part")


@app.route("/dashboard/messages/<message_id>/resend", methods=["POST"])
@page()
async def dashboard_resend(api: API, request: Any, who: Visitor, message_id: str) -> bytes:
    recipient, stored = await _message(api, who, message_id)
    try:
        (new_id,) = await api.submission.resubmit(who.account_id, stored, recipient.recipient)
    except Refused as refusal:
        raise Forbidden(refusal.text) from None
    raise Redirect(f"/dashboard/messages/{new_id}?resent={message_id}")

