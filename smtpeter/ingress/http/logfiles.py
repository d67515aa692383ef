"""GET /v1/logfiles...: the days with events, the log files of a day, and one log file in
CSV (with or without its header line), JSON or XML. The shapes are SMTPeter's (events/logfiles.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from smtpeter.events import logfiles as shapes
from smtpeter.ingress.http.routing import app, handled, json_reply
from smtpeter.storage import NotFound

if TYPE_CHECKING:
    from smtpeter.ingress.http.site import API

# The path after the file name -> the form served.
_FORMS = {"header": "header", "json": "json", "xml": "xml", "csv": "csv", "csv/header": "header"}


@app.route("/v1/logfiles", methods=["GET"])
@handled
async def logfile_days(api: API, request: Any) -> bytes:
    account = await api.account(request)
    days = set(await api.storage.event_days(account)) | set(await api.storage.dmarc_days(account))
    return json_reply(request, [shapes.day_text(d) for d in sorted(days)])


@app.route("/v1/logfiles/<item>", methods=["GET"])
@handled
async def logfile(api: API, request: Any, item: str) -> bytes:
    """A day (yyyy-mm-dd): the names of its log files; a file name: the file in CSV."""
    return await _logfile(api, request, item, "csv")


@app.route("/v1/logfiles/<item>/<path:form>", methods=["GET"])
@handled
async def logfile_as(api: API, request: Any, item: str, form: str) -> bytes:
    if form not in _FORMS:
        raise NotFound()
    return await _logfile(api, request, item, _FORMS[form])


async def _logfile(api: API, request: Any, item: str, form: str) -> bytes:
    account = await api.account(request)
    day = shapes.parse_day(item)
    if day is not None and form == "csv":
        present = {shapes.EVENT_LOG[t] for t in await api.storage.event_types_on(account, day)
                   if t in shapes.EVENT_LOG}
        if await api.storage.dmarc_reports_on(account, day):
            present.add(shapes.DMARC)
        return json_reply(request, [f"{name}.{item}.log" for name in sorted(present)])
    match = shapes.FILE_NAME.fullmatch(item)
    known = (*shapes.COLUMNS, shapes.DMARC)
    if not match or match.group(1) not in known or shapes.parse_day(match.group(2)) is None:
        raise NotFound()
    name, day = match.group(1), shapes.parse_day(match.group(2))
    if name == shapes.DMARC:
        rows = [shapes.dmarc_record(r) for r in await api.storage.dmarc_reports_on(account, day)]
        content, content_type = shapes.render_rows(shapes.DMARC_COLUMNS, rows, form)
        request.setHeader(b"content-type", content_type.encode())
        return content
    events = await api.storage.events_on(account, day, shapes.LOG_EVENTS[name])
    content, content_type = shapes.render(name, events, form)
    request.setHeader(b"content-type", content_type.encode())
    return content
