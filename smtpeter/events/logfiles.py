"""SMTPeter's log files and event records: the same columns, in SMTPeter's order.

An event as the API returns it (``{"event": ..., "data": {...}}``) and a log
file row are one record in two shapes, so both are built here from a stored
event.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import re
from collections.abc import Iterable
from typing import Any
from xml.sax.saxutils import escape

from smtpeter.storage.dmarc import StoredDmarcReport
from smtpeter.storage.models import Event

DAY = 86400
COLUMNS: dict[str, list[str]] = {
    "abuses": ["id", "time", "envelope", "recipient", "tags", "templateid"],
    "attempts": ["id", "time", "envelope", "recipient", "properties", "tags", "templateid"],
    "bounces": ["id", "time", "envelope", "recipient", "mime", "tags", "templateid"],
    # Clicks and opens: SMTPeter's columns, then whether a machine made it and why (events/bots.py).
    "clicks": ["id", "time", "headers", "ip", "url", "destination", "tags", "recipient", "city",
               "countryname", "countrycode", "regioncode", "templateid", "bot", "bot_reason"],
    "deliveries": ["id", "time", "envelope", "recipient", "from", "to", "attempt", "tags", "templateid"],
    "failures": ["id", "time", "envelope", "recipient", "attempt", "from", "to", "type", "code", "status",
                 "description", "state", "tags", "templateid"],
    "opens": ["id", "time", "headers", "ip", "protocol", "tags", "recipient", "city", "countryname",
              "countrycode", "regioncode", "templateid", "bot", "bot_reason"],
    "responses": ["id", "time", "envelope", "recipient", "mime", "tags", "templateid"],
}
# Received DMARC aggregate reports: rows of their own table (storage/dmarc.py), not events.
DMARC = "dmarc"
DMARC_COLUMNS = ["time", "organizationName", "email", "reportId", "begin", "end", "domain", "sendingDomain",
                 "messages", "failedSpf", "failedDkim"]
# Stored event types behind each log; a deferred attempt is a failure that will be retried.
LOG_EVENTS: dict[str, tuple[str, ...]] = {
    "attempts": ("attempt",), "deliveries": ("delivery",), "failures": ("failure", "deferred"),
    "bounces": ("bounce",), "clicks": ("click",), "opens": ("open",), "responses": ("response",),
    "abuses": ("abuse",),
}
EVENT_LOG = {event: log for log, events in LOG_EVENTS.items() for event in events}
# The API names: a deferral is reported as a failure with action "failure"
# (SMTPeter's webhooks use "failed" for the final one).
API_EVENT = {"attempt": "attempt", "delivery": "delivery", "failure": "failure", "deferred": "failure",
             "bounce": "bounce", "click": "click", "open": "open", "response": "response", "abuse": "abuse",
             "warning": "warning"}
FILE_NAME = re.compile(r"([a-z]+)\.(\d{4}-\d{2}-\d{2})\.log")


def day_text(day: int) -> str:
    return datetime.datetime.fromtimestamp(day * DAY, datetime.UTC).strftime("%Y-%m-%d")


def parse_day(text: str) -> int | None:
    """A yyyy-mm-dd date as a day number; None if it is not one we could have events on."""
    try:
        value = datetime.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=datetime.UTC)
    except ValueError:
        return None
    # Window arithmetic adds and subtracts a month: stay clear of datetime's ends.
    if not 1970 <= value.year <= 9000:
        return None
    return int(value.timestamp()) // DAY


def time_text(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def record(event: Event) -> dict[str, Any]:
    """One event with every column of its log, in order (absent values empty)."""
    data = event.data
    values: dict[str, Any] = {
        "id": event.message_id or "", "time": time_text(event.time), "templateid": 0,
        "recipient": data.get("recipient") or event.recipient or "",
    }
    tags = data.get("tags") or []
    values["tags"] = ";".join(tags) if isinstance(tags, list) else str(tags)
    if event.type == "deferred":
        values["type"] = "deferred"
    columns = COLUMNS[EVENT_LOG[event.type]]
    row = {column: values.get(column, data.get(column, "")) for column in columns}
    if event.type in ("failure", "deferred"):
        row["action"] = "failure" if event.type == "deferred" else "failed"
    return row


def dmarc_record(report: StoredDmarcReport) -> dict[str, Any]:
    """A received DMARC report as a ``dmarc`` log row: when it came, who reported on what."""
    return {"time": time_text(report.received), "organizationName": report.org_name, "email": report.email,
            "reportId": report.report_id, "begin": time_text(report.begin), "end": time_text(report.end),
            "domain": report.domain, "sendingDomain": report.sending_domains, "messages": report.messages,
            "failedSpf": report.failed_spf, "failedDkim": report.failed_dkim}


def api_event(event: Event) -> dict[str, Any]:
    return {"event": API_EVENT[event.type], "data": record(event)}


# Characters XML 1.0 cannot carry at all, not even escaped (a reply text may hold them).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _text(value: Any) -> str:
    """A value as CSV and XML write it (true/false, as JSON does)."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _xml_text(value: Any) -> str:
    return escape(_NOT_XML.sub("\ufffd", _text(value)))


def render(log: str, events: Iterable[Event], form: str) -> tuple[bytes, str]:
    """A log file as CSV (``csv``, ``header``), ``json`` or ``xml``: (body, content type)."""
    columns = COLUMNS[log]
    return render_rows(columns, [{c: record(e).get(c, "") for c in columns} for e in events], form)


def render_rows(columns: list[str], rows: list[dict[str, Any]], form: str) -> tuple[bytes, str]:
    """Rows (every column filled in) as ``render`` writes them."""
    if form == "json":
        return json.dumps(rows, ensure_ascii=False).encode(), "application/json"
    if form == "xml":
        parts = ["<records>"]
        for row in rows:
            parts.append("<record>" + "".join(f"<{c}>{_xml_text(row[c])}</{c}>" for c in columns)
                         + "</record>")
        parts.append("</records>")
        return "".join(parts).encode(), "application/xml"
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    if form == "header":
        writer.writerow(columns)
    for row in rows:
        writer.writerow([_text(row[c]) for c in columns])
    return out.getvalue().encode(), "text/csv; charset=utf-8"
