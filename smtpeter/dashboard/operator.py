"""The operator's dashboard (/dashboard/operator): every account, and the queue by destination
with pause, resume and retry now.

Only an operator's session reaches it (``http.admin_token``, or a login made with
``smtpeter admin create``); anyone else gets the 404 page. A destination's figures are the
dispatcher's ``stats()``, the very ones /metrics exports, joined with what storage holds per
receiving domain (recipients waiting, the oldest, the last reply recorded). Destinations
live in this process: each node shows, and pauses, its own; a pause lasts until resumed
or until the process ends. Retry now changes the queue itself, for every node.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from smtpeter import credentials, dns
from smtpeter.dashboard.web import Redirect, Visitor, form, page, render
from smtpeter.delivery.dispatcher import Dispatcher, Loop
from smtpeter.events.logfiles import time_text
from smtpeter.ingress.http.routing import app
from smtpeter.storage import NotFound

if TYPE_CHECKING:
    from smtpeter.ingress.http.site import API

# Destinations shown at most (the busiest), and the domains of the queue read for them.
SHOWN = 100
DOMAINS_READ = 500
DAY = 86400
_DOMAIN = re.compile(r"^[a-z0-9._-]+$")  # a queue's domain column: lower case (IDNs as A-labels)
# What the page says after an action (?done=...): fixed texts, nothing from the URL is shown.
NOTICES = {"paused": "Paused: no new connection until you resume it.",
           "resumed": "Resumed: delivery goes on.",
           "retried": "Made due now: delivered as soon as the destination takes them (not while paused).",
           "unknown": "The destination could not be looked up (DNS); nothing was changed."}


async def check_admin_login(api: API, name: str, password: str) -> bool:
    """Whether ``name`` and ``password`` are an admin login's (``smtpeter admin create``)."""
    stored = await api.storage.admin_password_hash(name)
    return stored is not None and await api.in_thread(credentials.verify_password, password, stored)


@dataclass
class DestinationRow:
    """One line of the queue table: a destination this process knows, or a queued domain whose
    destination it has not looked up (since it started, or since that one was idle a while)."""

    target: str  # what the forms post: the destination's key, or the domain
    domains: list[str]
    known: bool
    figures: dict[str, Any] = field(default_factory=dict)  # Dispatcher.stats()' for it
    waiting: int = 0
    oldest: float | None = None
    last_error: str = ""
    last_error_time: float | None = None

    @property
    def order(self) -> tuple[int, int, int, str]:
        return (-self.waiting, -self.figures.get("sessions", 0), -self.figures.get("queued", 0), self.target)


def _age(seconds: float) -> str:
    """A duration as people read it: 45 s, 12 min, 3 h 5 min, 2 d 4 h."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < DAY:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // DAY} d {seconds % DAY // 3600} h"


async def destination_rows(api: API, stats: dict[str, Any]) -> list[DestinationRow]:
    """The busiest destinations first: the dispatcher's figures (``stats``) with the queue's
    per domain."""
    rows = {key: DestinationRow(key, figures["domains"], True, figures, last_error=figures["last_error"],
                                last_error_time=figures["last_error_time"])
            for key, figures in stats.items()}
    owner = {domain: key for key, figures in stats.items() for domain in figures["domains"]}
    queued = await api.storage.queue_by_domain(DOMAINS_READ)
    for entry in queued:
        key = owner.get(entry.domain)
        row = rows[key] if key else rows.setdefault(entry.domain, DestinationRow(entry.domain, [entry.domain],
                                                                                 False))
        row.waiting += entry.waiting
        row.oldest = entry.oldest if row.oldest is None else min(row.oldest, entry.oldest)
    shown = sorted(rows.values(), key=lambda row: row.order)[:SHOWN]
    # Where this process has no reply of its own (not tried since it started, or since the
    # destination was idle a while): the last one the queue recorded for its waiting mail.
    waiting = {entry.domain for entry in queued}
    recorded = await api.storage.last_errors([d for row in shown if not row.last_error for d in row.domains
                                              if d in waiting])
    for row in shown:
        latest = max((recorded[d] for d in row.domains if d in recorded), key=lambda e: e.time, default=None)
        if latest is not None:
            row.last_error, row.last_error_time = latest.text, latest.time
    return shown


def _dispatcher(api: API) -> Dispatcher:
    if api.delivery is None:
        raise NotFound("no delivery in this process")
    return api.delivery


def _target(api: API, request: Any) -> str:
    """The destination key or queued domain a form names (anything else: the 404 page)."""
    target = form(request).get("destination", "").strip()
    if target in _dispatcher(api).destinations or _DOMAIN.match(target):
        return target
    raise NotFound(f"no destination {target!r}")


@app.route("/dashboard/operator", methods=["GET"])
@page(admin=True)
async def dashboard_operator(api: API, request: Any, who: Visitor) -> bytes:
    now = api.clock.seconds()
    accounts = await api.storage.account_figures(now - now % DAY)
    stats = api.stats()
    rows = await destination_rows(api, stats)
    done = request.args.get(b"done", [b""])[0].decode("ascii", "replace")
    return render(request, "operator.html", title="Operator", visitor=who, accounts=accounts, rows=rows,
                  depth=await api.storage.queue_depth(), destinations=len(stats),
                  connections=sum(figures["sessions"] for figures in stats.values()),
                  now=now, age=_age, time_text=time_text, notice=NOTICES.get(done, ""))


@app.route("/dashboard/operator/pause", methods=["POST"])
@page(admin=True)
async def dashboard_operator_pause(api: API, request: Any, who: Visitor) -> bytes:
    try:
        await _dispatcher(api).pause(_target(api, request))
    except (dns.DNSError, Loop):
        raise Redirect("/dashboard/operator?done=unknown") from None
    raise Redirect("/dashboard/operator?done=paused")


@app.route("/dashboard/operator/resume", methods=["POST"])
@page(admin=True)
async def dashboard_operator_resume(api: API, request: Any, who: Visitor) -> bytes:
    _dispatcher(api).resume(_target(api, request))
    raise Redirect("/dashboard/operator?done=resumed")


@app.route("/dashboard/operator/retry", methods=["POST"])
@page(admin=True)
async def dashboard_operator_retry(api: API, request: Any, who: Visitor) -> bytes:
    dispatcher = _dispatcher(api)
    target = _target(api, request)
    await api.storage.retry_domains_now(dispatcher.domains_of(target))
    dispatcher.retry_now(target)
    raise Redirect("/dashboard/operator?done=retried")
