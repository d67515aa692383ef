"""GET /v1/events/...: a message's events, or an account's by recipient address or by tags.

SMTPeter's windows: a month at most, from ``start``, up to ``end``, or the last month; events
are shaped as SMTPeter returns them (events/logfiles.py).
"""

from __future__ import annotations

import calendar
import datetime
from typing import TYPE_CHECKING, Any

from smtpeter.events import logfiles
from smtpeter.ingress.http.fields import BadRequest
from smtpeter.ingress.http.routing import app, handled, json_reply, query
from smtpeter.storage import EVENTS_LIMIT
from smtpeter.storage.models import Event

if TYPE_CHECKING:
    from smtpeter.ingress.http.site import API

MAX_TAG_FILTER = 20  # tags one events query may name


@app.route("/v1/events/messageid/<message_id>", methods=["GET"])
@handled
async def events_by_message(api: API, request: Any, message_id: str) -> bytes:
    account = await api.account(request)
    entry = await api.storage.recipient(message_id, account_id=account)
    since, until = _window(api, request, anchor=entry.created)
    events = [e for e in await api.storage.events(message_id, account_id=account) if since <= e.time < until]
    return _reply(request, events, _tag_filter(request))


@app.route("/v1/events/email/<path:address>", methods=["GET"])
@handled
async def events_by_address(api: API, request: Any, address: str) -> bytes:
    account = await api.account(request)
    since, until = _window(api, request)
    tags = _tag_filter(request)
    events = await api.storage.account_events(account, since, until, recipient=address, tags=sorted(tags))
    return _reply(request, events, tags)


@app.route("/v1/events/tags/<path:tags>", methods=["GET"])
@handled
async def events_by_tags(api: API, request: Any, tags: str) -> bytes:
    account = await api.account(request)
    wanted = _tag_filter(request, *tags.replace("/", ";").split(";"))
    if not wanted:
        raise BadRequest("name at least one tag")
    since, until = _window(api, request)
    events = await api.storage.account_events(account, since, until, tags=sorted(wanted))
    return _reply(request, events, wanted)


def _window(api: API, request: Any, anchor: float | None = None) -> tuple[float, float]:
    """SMTPeter's rules: a month at most, from start, up to end, or the last month."""
    start = _date_arg(request, "start")
    end = _date_arg(request, "end")
    if start is not None and end is not None:
        if end <= start:
            raise BadRequest("'end' must be after 'start'")
        return start, min(end, _add_months(start, 1))
    if start is not None:
        return start, _add_months(start, 1)
    if end is not None:
        return _add_months(end, -1), end
    if anchor is not None:
        return anchor, _add_months(anchor, 1)
    now = api.clock.seconds()
    return _add_months(now, -1), now + 1


def _date_arg(request: Any, name: str) -> float | None:
    value = query(request, name)
    if not value:
        return None
    day = logfiles.parse_day(value)
    if day is None:
        raise BadRequest(f"'{name}' must be a date, yyyy-mm-dd")
    return float(day * logfiles.DAY)


def _tag_filter(request: Any, *more: str) -> set[str]:
    tags = set((query(request, "tags") or "").split(";")) | set(more)
    tags -= {""}
    if len(tags) > MAX_TAG_FILTER:
        raise BadRequest(f"name at most {MAX_TAG_FILTER} tags")
    return tags


def _reply(request: Any, events: list[Event], tags: set[str] = frozenset()) -> bytes:
    if len(events) >= EVENTS_LIMIT:
        # SMTPeter's API has no paging: say that a narrower window would show more.
        request.setHeader(b"x-smtpeter-truncated", str(EVENTS_LIMIT).encode())
    if tags:
        events = [e for e in events if tags <= set(e.data.get("tags") or [])]
    return json_reply(request, [logfiles.api_event(e) for e in events])


def _add_months(timestamp: float, months: int) -> float:
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day).timestamp()
