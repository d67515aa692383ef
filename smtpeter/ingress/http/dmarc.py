"""Received DMARC aggregate reports over REST (SMTPeter's /v1/dmarc).

``GET /v1/dmarc`` lists the days (UTC, yyyy-mm-dd) on which the account received reports;
``GET /v1/dmarc/DATE/FROM/FOR[/ID]`` answers the XML of the report that the reporter domain FROM
sent about the domain FOR and that arrived on DATE, the ID-th (from 0, in the order they came)
when there are several. DATE is the day a report was received, as in the ``dmarc`` log file,
whose rows name FROM (the domain of its ``email``) and FOR (its ``domain``). Another account's
report is a 404, like one that does not exist.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from smtpeter.events.logfiles import day_text, parse_day
from smtpeter.ingress.http.routing import app, handled, json_reply
from smtpeter.storage import NotFound

if TYPE_CHECKING:
    from smtpeter.ingress.http.site import API


@app.route("/v1/dmarc", methods=["GET"])
@handled
async def dmarc_days(api: API, request: Any) -> bytes:
    account = await api.account(request)
    return json_reply(request, [day_text(day) for day in await api.storage.dmarc_days(account)])


@app.route("/v1/dmarc/<date>/<reporter>/<domain>", methods=["GET"])
@handled
async def dmarc_report(api: API, request: Any, date: str, reporter: str, domain: str) -> bytes:
    return await _report(api, request, date, reporter, domain, "0")


@app.route("/v1/dmarc/<date>/<reporter>/<domain>/<index>", methods=["GET"])
@handled
async def dmarc_report_at(api: API, request: Any, date: str, reporter: str, domain: str, index: str) -> bytes:
    return await _report(api, request, date, reporter, domain, index)


async def _report(api: API, request: Any, date: str, reporter: str, domain: str, index: str) -> bytes:
    account = await api.account(request)
    day = parse_day(date)
    # At most six digits: beyond any day's reports, and the OFFSET stays a small number.
    if day is None or not (index.isascii() and index.isdigit() and len(index) <= 6):
        raise NotFound()
    xml = await api.storage.dmarc_report_xml(account, day, reporter, domain, int(index))
    request.setHeader(b"content-type", b"application/xml")
    return xml
