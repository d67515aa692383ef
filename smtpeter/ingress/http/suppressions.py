"""The suppression list over REST: /v1/suppressions, /v1/suppression(/ADDRESS).

Every call is the token's account's: another account's entries are never seen. An entry is
``{"address", "reason", "source", "created", "expires"}`` (times as the log files write them,
UTC ``YYYY-MM-DD hh:mm:ss``; ``expires`` null: until removed). POST takes ``{"address",
"reason"?, "expires"?}``, or MailerQ's ``{"type": "address", "value", "description"?}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from smtpeter.address import AddressError, check_mailbox
from smtpeter.ingress.http.fields import BadRequest, mailbox, text_field
from smtpeter.ingress.http.routing import app, handled, json_reply, query, text
from smtpeter.storage import NotFound
from smtpeter.storage.suppressions import Suppression
from smtpeter.suppressions.export import check_reason, csv_text, entry_shape, parse_expires
from smtpeter.suppressions.rules import MANUAL

if TYPE_CHECKING:
    from smtpeter.ingress.http.site import API

DEFAULT_LIMIT, MAX_LIMIT = 1000, 100_000
_FIELDS = {"address", "reason", "expires", "type", "value", "description", "access_token"}


def new_entry(account: str, body: dict[str, Any], now: float) -> Suppression:
    """The entry a POST body asks for; BadRequest says what is wrong with it."""
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0][:40]!r}: give address, reason and expires")
    if "value" in body:  # MailerQ's shape
        if body.get("type", "address") != "address":
            raise BadRequest("only 'type': 'address' entries are kept (not whole domains)")
        if "address" in body:
            raise BadRequest("give 'address' or 'value', not both")
        address = mailbox("value", body["value"])
    elif "address" in body:
        address = mailbox("address", body["address"])
    else:
        raise BadRequest("'address' is required")
    source = "api"
    if body.get("description") not in (None, ""):
        source = "api: " + text_field("description", body["description"])[:200]
    try:
        return Suppression(account, address, check_reason(body.get("reason", MANUAL)), source, now,
                           parse_expires(body.get("expires"), now))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def listed_address(address: str) -> str:
    """An address from the URL; one that cannot be on a list is simply not found."""
    try:
        return check_mailbox(address, utf8=True)
    except AddressError:
        raise NotFound(f"{address[:40]!r} is not on the suppression list") from None


def _limit(request: Any) -> int:
    value = query(request, "limit")
    if value is None:
        return DEFAULT_LIMIT
    if not (value.isascii() and value.isdigit() and 1 <= int(value[:7]) <= MAX_LIMIT):
        raise BadRequest(f"limit must be a number from 1 to {MAX_LIMIT}")
    return int(value)


@app.route("/v1/suppressions", methods=["GET"])
@handled
async def list_suppressions(api: API, request: Any) -> bytes:
    """The account's entries by address: ``limit`` of them after ``after``; ``format=csv`` exports all."""
    account = await api.account(request)
    form = query(request, "format") or "json"
    if form not in ("json", "csv"):
        raise BadRequest("format must be json or csv")
    if form == "csv":
        return await export_csv(api, request, account)
    entries = await api.storage.suppressions(account, _limit(request), query(request, "after") or "")
    return json_reply(request, [entry_shape(entry) for entry in entries])


@app.route("/v1/suppressions/csv", methods=["GET"])
@handled
async def export_suppressions(api: API, request: Any) -> bytes:
    return await export_csv(api, request, await api.account(request))


async def export_csv(api: API, request: Any, account: str) -> bytes:
    """The account's whole list as a CSV download (the dashboard's export too)."""
    entries = await api.storage.suppressions(account)
    request.setHeader(b"content-disposition", b'attachment; filename="suppressions.csv"')
    return text(request, csv_text(entries), b"text/csv; charset=utf-8")


@app.route("/v1/suppression", methods=["POST"])
@app.route("/v1/suppressions", methods=["POST"])
@handled
async def add_suppression(api: API, request: Any) -> bytes:
    account, body = await api.authenticated_body(request)
    entry = await api.suppressions.add(new_entry(account, body, api.clock.seconds()))
    return json_reply(request, entry_shape(entry))


@app.route("/v1/suppression/<address>", methods=["GET"])
@handled
async def get_suppression(api: API, request: Any, address: str) -> bytes:
    account = await api.account(request)
    return json_reply(request, entry_shape(await api.storage.suppression(account, listed_address(address))))


@app.route("/v1/suppression/<address>", methods=["DELETE"])
@handled
async def remove_suppression(api: API, request: Any, address: str) -> bytes:
    account = await api.account(request)
    await api.suppressions.remove(account, listed_address(address))
    return json_reply(request, True)
