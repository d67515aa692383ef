"""The customer's pages around sending: bounces, the suppression list, sender domains and their DNS,
webhooks, and credentials (SMTP logins, API tokens).

Klein names a route by its function: every function here starts with ``dashboard_``. Every page is
the session's account's: another account's domain, webhook, suppression or token is the same 404
page as one that does not exist. Changes go through the calls the REST API makes (the suppression
list, ``SenderDomains``, ``WebhookRegistry``, storage's tokens and logins), each a POST that
``web.page`` lets through only with the session's CSRF token. A new secret (an API token, a login's
password) is shown once, in the answer to the POST that made it.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from smtpeter.address import AddressError, check_mailbox, domain_key
from smtpeter.dashboard import charts
from smtpeter.dashboard.pages import PERIODS, bucket_starts, chosen_period
from smtpeter.dashboard.web import Redirect, Visitor, form, page, render
from smtpeter.domains.keys import public_view
from smtpeter.domains.model import ACTIVE, NEXT, RETIRED, STATUS_ITEMS, DkimKey, DomainSettings
from smtpeter.envelope import BOOLEAN_OPTIONS, IMAGES_VALUES, MessageOptions, OptionError
from smtpeter.events.logfiles import time_text
from smtpeter.ids import is_id
from smtpeter.ingress.http.fields import BadRequest
from smtpeter.ingress.http.routing import app
from smtpeter.ingress.http.suppressions import export_csv, listed_address, new_entry
from smtpeter.ingress.http.webhooks import attempt_shape, hook_shape
from smtpeter.storage import Conflict, NotFound
from smtpeter.storage.dashboard import BounceCount
from smtpeter.suppressions.rules import MANUAL
from smtpeter.webhooks.registry import WebhookError

if TYPE_CHECKING:
    from smtpeter.ingress.http.site import API

CHARTED_REASONS = 6  # reasons with a colour of their own in the chart; the rest are "other"
SHOWN_DOMAINS = 100  # receiving domains in the table, most bounces first
SUPPRESSIONS_PAGE = 200  # entries on one page of the list
CALLS_SHOWN = 100  # a webhook's latest attempts
DAY = 86400.0


def _arg(request: Any, name: str) -> str:
    return request.args.get(name.encode(), [b""])[0].decode("utf-8", "replace").strip()[:320]


def _time(seconds: float | None) -> str:
    return "" if seconds is None else time_text(seconds)


# -- bounces -------------------------------------------------------------------------------------


def bounce_tables(found: Sequence[BounceCount]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows by reason and by receiving domain, most first: counts, hard ones, returned (bounce
    reports) and refused (failed while delivering); a domain's rows name its reasons."""
    reasons: dict[str, Counter[str]] = defaultdict(Counter)
    domains: dict[str, Counter[str]] = defaultdict(Counter)
    domain_reasons: dict[str, Counter[str]] = defaultdict(Counter)
    for row in found:
        for table, key in ((reasons, row.reason), (domains, row.domain)):
            table[key]["count"] += row.count
            table[key]["hard"] += row.count if row.hard else 0
            table[key]["returned" if row.kind == "bounce" else "refused"] += row.count
        domain_reasons[row.domain][row.reason] += row.count
    total = sum(counts["count"] for counts in reasons.values()) or 1

    def rows(table: dict[str, Counter[str]]) -> list[dict[str, Any]]:
        ordered = sorted(table.items(), key=lambda item: (-item[1]["count"], item[0]))
        return [{"name": name, "count": c["count"], "hard": c["hard"], "returned": c["returned"],
                 "refused": c["refused"], "share": round(100 * c["count"] / total, 1)} for name, c in ordered]

    by_domain = rows(domains)[:SHOWN_DOMAINS]
    for row in by_domain:
        row["reasons"] = ", ".join(f"{reason} {count}" for reason, count in
                                   domain_reasons[row["name"]].most_common(3))
    return rows(reasons), by_domain


def reason_series(found: Sequence[BounceCount], starts: Sequence[int], bucket: int,
                  by_reason: Sequence[dict[str, Any]]) -> dict[str, list[int]]:
    """Counts per bucket of the most frequent reasons, the others together as "other"."""
    charted = [row["name"] for row in by_reason[:CHARTED_REASONS]]
    series = {name: [0] * len(starts) for name in charted}
    if len(by_reason) > CHARTED_REASONS:
        series["other"] = [0] * len(starts)
    first = starts[0] if starts else 0
    for row in found:
        index = (row.start - first) // bucket
        if 0 <= index < len(starts):
            series[row.reason if row.reason in charted else "other"][index] += row.count
    return series


@app.route("/dashboard/bounces", methods=["GET"])
@page()
async def dashboard_bounces(api: API, request: Any, who: Visitor) -> bytes:
    period = chosen_period(request)
    label, _, bucket = PERIODS[period]
    starts = bucket_starts(period, api.clock.seconds())
    found = await api.storage.bounce_counts(who.account_id, starts[0], starts[-1] + bucket, bucket)
    by_reason, by_domain = bounce_tables(found)
    chart = charts.stacked_bars(starts, bucket, reason_series(found, starts, bucket, by_reason),
                                f"{label}: bounces and failures by reason")
    return render(request, "bounces.html", title="Bounces", visitor=who, period=period, periods=PERIODS,
                  chart=chart, by_reason=by_reason, by_domain=by_domain,
                  total=sum(row["count"] for row in by_reason), hard=sum(row["hard"] for row in by_reason))


# -- the suppression list --------------------------------------------------------------------------


async def _suppressions_page(api: API, request: Any, who: Visitor, status: int = 200,
                             problem: str = "", entered: dict[str, str] | None = None) -> bytes:
    wanted, after = _arg(request, "address"), _arg(request, "after")
    if wanted:
        try:
            entries = [await api.storage.suppression(who.account_id, check_mailbox(wanted, utf8=True))]
        except (AddressError, NotFound):
            entries = []
    else:
        entries = await api.storage.suppressions(who.account_id, SUPPRESSIONS_PAGE + 1, after)
    more = entries[SUPPRESSIONS_PAGE - 1].address if len(entries) > SUPPRESSIONS_PAGE else ""
    # A source that is a message id (the rules') links to that message's page.
    rows = [{"address": e.address, "reason": e.reason, "source": e.source, "message": is_id(e.source),
             "created": _time(e.created), "expires": _time(e.expires)} for e in entries[:SUPPRESSIONS_PAGE]]
    return render(request, "suppressions.html", status, title="Suppressions", visitor=who, rows=rows,
                  wanted=wanted, more=quote(more), problem=problem,
                  entered=entered or {"reason": MANUAL})


@app.route("/dashboard/suppressions", methods=["GET"])
@page()
async def dashboard_suppressions(api: API, request: Any, who: Visitor) -> bytes:
    return await _suppressions_page(api, request, who)


@app.route("/dashboard/suppressions", methods=["POST"])
@page()
async def dashboard_suppression_add(api: API, request: Any, who: Visitor) -> bytes:
    fields = form(request)
    expires = fields.get("expires", "").strip()
    body = {"address": fields.get("address", ""), "reason": fields.get("reason", "").strip() or MANUAL,
            # The form asks for a day (UTC); the entry expires as it begins.
            "expires": f"{expires} 00:00:00" if expires else None}
    try:
        entry = new_entry(who.account_id, body, api.clock.seconds())
    except BadRequest as refusal:
        return await _suppressions_page(api, request, who, 400, refusal.message, fields)
    await api.suppressions.add(dataclasses.replace(entry, source="dashboard"))
    raise Redirect("/dashboard/suppressions")


@app.route("/dashboard/suppressions/remove", methods=["POST"])
@page()
async def dashboard_suppression_remove(api: API, request: Any, who: Visitor) -> bytes:
    # NotFound (the 404 page) for an address that is not on this account's list.
    await api.suppressions.remove(who.account_id, listed_address(form(request).get("address", "")))
    raise Redirect("/dashboard/suppressions")


@app.route("/dashboard/suppressions.csv", methods=["GET"])
@page()
async def dashboard_suppressions_csv(api: API, request: Any, who: Visitor) -> bytes:
    return await export_csv(api, request, who.account_id)


# -- sender domains --------------------------------------------------------------------------------


async def _domain(api: API, who: Visitor, name: str) -> DomainSettings:
    """The account's domain; NotFound for another account's, or none."""
    return await api.storage.domain_settings(who.account_id, domain_key(name))


def key_view(key: DkimKey, rotation_days: float) -> dict[str, Any]:
    """A key as the page shows it: its public parts, and what happens to it next and when."""
    view = public_view(key)
    if not key.managed:
        plan = f"installed by you; signs until {_time(key.end)}" if key.end else "installed by you"
    elif key.state == ACTIVE:
        since = key.activated if key.activated is not None else key.created
        plan = f"signs; rotates from {_time(since + rotation_days * DAY)} once the next key is published"
    elif key.state == NEXT:
        plan = "signs once it is published and the signing key (if any) is due to rotate"
    elif key.state == RETIRED:
        plan = f"retired; stays published until {_time(key.end)}" if key.end else "retired"
    else:
        plan = key.state
    return {**view, "plan": plan}


@app.route("/dashboard/domains", methods=["GET"])
@page()
async def dashboard_domains(api: API, request: Any, who: Visitor) -> bytes:
    rows = []
    for settings in await api.storage.domain_settings_list(who.account_id):
        found = await api.storage.domain_status(settings.domain)
        rows.append({"name": settings.domain, "approved": settings.approved,
                     "items": found.items if found else {}, "checked": _time(found.checked) if found else ""})
    return render(request, "domains.html", title="Domains", visitor=who, rows=rows, items=STATUS_ITEMS)


@app.route("/dashboard/domains/<name>", methods=["GET"])
@page()
async def dashboard_domain(api: API, request: Any, who: Visitor, name: str) -> bytes:
    settings = await _domain(api, who, name)
    recommended = await api.domains.records(who.account_id, settings.domain, "recommended")
    selfhosted = await api.domains.records(who.account_id, settings.domain, "selfhosted")
    found = await api.storage.domain_status(settings.domain)
    checks = [{"item": item, "state": found.items.get(item, "") if found else "",
               "remark": found.remarks.get(item, "") if found else ""} for item in STATUS_ITEMS]
    keys = await api.domains.keystore.keys(domain=settings.domain, account_id=who.account_id)
    keys.sort(key=lambda k: (k.algorithm, k.selector))
    rotation_days = api.domains.config.rotation_days
    return render(request, "domain.html", title=settings.domain, visitor=who, domain=settings,
                  recommended=recommended, selfhosted=selfhosted, same=recommended == selfhosted,
                  checks=checks, checked=_time(found.checked) if found else "",
                  keys=[key_view(key, rotation_days) for key in keys])


@app.route("/dashboard/domains/<name>/check", methods=["POST"])
@page()
async def dashboard_domain_check(api: API, request: Any, who: Visitor, name: str) -> bytes:
    settings = await _domain(api, who, name)
    await api.domains.check(settings)
    raise Redirect(f"/dashboard/domains/{quote(settings.domain)}")


# -- webhooks --------------------------------------------------------------------------------------


@app.route("/dashboard/webhooks", methods=["GET"])
@page()
async def dashboard_webhooks(api: API, request: Any, who: Visitor) -> bytes:
    hooks = [{**hook_shape(hook), "calls": await api.storage.webhook_call_counts(hook.id)}
             for hook in await api.webhooks.list(who.account_id)]
    return render(request, "webhooks.html", title="Webhooks", visitor=who, hooks=hooks)


async def _webhook_page(api: API, request: Any, who: Visitor, hook_id: str, status: int = 200,
                        problem: str = "") -> bytes:
    hook = await api.webhooks.get(who.account_id, hook_id)  # NotFound for another account's
    attempts = [{**attempt_shape(a), "test": a.event_id < 0}
                for a in await api.webhooks.calls(who.account_id, hook.id, CALLS_SHOWN)]
    return render(request, "webhook.html", status, title=f"Webhook {hook.id}", visitor=who,
                  hook=hook_shape(hook), attempts=attempts, problem=problem,
                  sent=_arg(request, "sent") == "1")


@app.route("/dashboard/webhooks/<hook_id>", methods=["GET"])
@page()
async def dashboard_webhook(api: API, request: Any, who: Visitor, hook_id: str) -> bytes:
    return await _webhook_page(api, request, who, hook_id)


@app.route("/dashboard/webhooks/<hook_id>/test", methods=["POST"])
@page()
async def dashboard_webhook_test(api: API, request: Any, who: Visitor, hook_id: str) -> bytes:
    try:
        await api.webhooks.send_test(who.account_id, hook_id)
    except WebhookError as refusal:
        return await _webhook_page(api, request, who, hook_id, 409, str(refusal))
    raise Redirect(f"/dashboard/webhooks/{hook_id}?sent=1")


@app.route("/dashboard/webhooks/<hook_id>/enable", methods=["POST"])
@page()
async def dashboard_webhook_enable(api: API, request: Any, who: Visitor, hook_id: str) -> bytes:
    await api.webhooks.enable(who.account_id, hook_id)
    raise Redirect(f"/dashboard/webhooks/{hook_id}")


@app.route("/dashboard/webhooks/<hook_id>/verify", methods=["POST"])
@page()
async def dashboard_webhook_verify(api: API, request: Any, who: Visitor, hook_id: str) -> bytes:
    await api.webhooks.verify(who.account_id, hook_id)
    raise Redirect(f"/dashboard/webhooks/{hook_id}")


# -- credentials -----------------------------------------------------------------------------------


async def _credentials_page(api: API, request: Any, who: Visitor, status: int = 200, problem: str = "",
                            secret: dict[str, str] | None = None) -> bytes:
    logins = [{"username": login.username, "options": login.options.as_dict(), "disabled": login.disabled,
               "created": _time(created)} for login, created in await api.storage.smtp_logins(who.account_id)]
    tokens = [{**token, "created": _time(token["created"]), "revoked": _time(token["revoked"])}
              for token in await api.storage.api_tokens(who.account_id)]
    return render(request, "credentials.html", status, title="Credentials", visitor=who, logins=logins,
                  tokens=tokens, problem=problem, secret=secret, options=BOOLEAN_OPTIONS,
                  images=IMAGES_VALUES)


@app.route("/dashboard/credentials", methods=["GET"])
@page()
async def dashboard_credentials(api: API, request: Any, who: Visitor) -> bytes:
    return await _credentials_page(api, request, who)


@app.route("/dashboard/credentials/tokens", methods=["POST"])
@page()
async def dashboard_token_create(api: API, request: Any, who: Visitor) -> bytes:
    description = " ".join(form(request).get("description", "").split())[:200]
    token_id, token = await api.storage.create_api_token(who.account_id, description)
    return await _credentials_page(api, request, who, secret={"kind": "API token", "id": token_id,
                                                              "value": token})


@app.route("/dashboard/credentials/tokens/<token_id>/revoke", methods=["POST"])
@page()
async def dashboard_token_revoke(api: API, request: Any, who: Visitor, token_id: str) -> bytes:
    if not is_id(token_id):
        raise NotFound(token_id)
    await api.storage.revoke_api_token(who.account_id, token_id)  # NotFound for another account's
    api.forget_tokens()  # refused from now on, not once the API's cache of it runs out
    raise Redirect("/dashboard/credentials")


def login_options(fields: dict[str, str]) -> MessageOptions:
    """The options a login form sets (a field left empty: not set, mail says or the default holds)."""
    return MessageOptions.parse({name: fields[name] for name in (*BOOLEAN_OPTIONS, "images")
                                 if fields.get(name)})


@app.route("/dashboard/credentials/logins", methods=["POST"])
@page()
async def dashboard_login_create(api: API, request: Any, who: Visitor) -> bytes:
    fields = form(request)
    username = fields.get("username", "").strip()
    if not username or len(username) > 100 or not username.isprintable() or " " in username:
        return await _credentials_page(api, request, who, 400,
                                       "A username is 1 to 100 characters, without spaces.")
    try:
        password = await api.storage.create_smtp_login(who.account_id, username, login_options(fields))
    except OptionError as refusal:
        return await _credentials_page(api, request, who, 400, str(refusal))
    except Conflict:
        return await _credentials_page(api, request, who, 409, f"The username {username!r} is taken.")
    return await _credentials_page(api, request, who, secret={"kind": "SMTP password", "id": username,
                                                              "value": password})
