"""Sender domains over REST, as SMTPeter has them: /v1/domain(s), /v1/dns, /v1/spf, /v1/dkimkey(s).

The work is smtpeter/domains/registry.py's; this module reads requests and shapes answers. A
private key never leaves through any of these: installed keys go in, only public parts come out.
"""

from __future__ import annotations

import datetime
import ipaddress
from typing import TYPE_CHECKING, Any

from smtpeter.address import domain_key
from smtpeter.domains import records
from smtpeter.domains.keys import DkimKeyError, public_view
from smtpeter.domains.model import ACTIVE, DkimKey, DomainSettings
from smtpeter.domains.registry import SettingError
from smtpeter.ingress.http.fields import BadRequest
from smtpeter.ingress.http.routing import app, body_size, handled, json_reply, text
from smtpeter.storage import Conflict, NotFound

if TYPE_CHECKING:
    from smtpeter.ingress.http.site import API

SPF_MECHANISMS = ("include", "a", "mx", "ip4", "ip6", "exists", "ptr")


def _day(date: datetime.date | None) -> str | None:
    return date.isoformat() if date else None


def _time(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def domain_shape(api: API, settings: DomainSettings) -> dict[str, Any]:
    operator = api.domains.operator
    return {
        "name": settings.domain, "approved": settings.approved, "bounces": settings.bounces,
        "tracking": settings.tracking, "https": settings.https, "ips": list(operator.sending_addresses),
        "policy": settings.dmarc.policy, "percentage": settings.dmarc.percentage,
        "startdate": _day(settings.dmarc.start), "enddate": _day(settings.dmarc.end),
        "addresses": [operator.dmarc_address, *settings.dmarc.addresses],
    }


async def _settings(api: API, request: Any, name: str) -> tuple[str, DomainSettings]:
    account = await api.account(request)
    return account, await api.storage.domain_settings(account, domain_key(name))


async def _changes(api: API, request: Any) -> dict[str, Any]:
    """The request's settings (SMTPeter's POSTs may come without a body)."""
    body = await api._body(request) if body_size(request) else {}
    body.pop("access_token", None)
    return body


# -- /v1/domain, /v1/domains -------------------------------------------------------------------


@app.route("/v1/domain/<name>", methods=["POST"])
@handled
async def register_domain(api: API, request: Any, name: str) -> bytes:
    """First call: the domain is made and its ownership record returned; later calls approve it
    once that record is in DNS, and change its settings. Approved, it answers the domain."""
    account = await api.account(request)
    changes = await _changes(api, request)
    try:
        settings = await api.domains.register(account, name, changes)
    except SettingError as exc:
        raise BadRequest(str(exc)) from None
    except Conflict:
        raise BadRequest(f"{domain_key(name)} is a sender domain of another account", 409) from None
    if not settings.approved:
        return json_reply(request, records.ownership_record(settings))
    return json_reply(request, domain_shape(api, settings))


@app.route("/v1/domain/<name>", methods=["GET"])
@handled
async def get_domain(api: API, request: Any, name: str) -> bytes:
    _, settings = await _settings(api, request, name)
    return json_reply(request, domain_shape(api, settings))


@app.route("/v1/domains", methods=["GET"])
@handled
async def list_domains(api: API, request: Any) -> bytes:
    account = await api.account(request)
    domains = await api.storage.domain_settings_list(account)
    return json_reply(request, [domain_shape(api, settings) for settings in domains])


@app.route("/v1/domain/<name>", methods=["DELETE"])
@handled
async def delete_domain(api: API, request: Any, name: str) -> bytes:
    account, settings = await _settings(api, request, name)
    await api.storage.delete_domain(account, settings.domain)
    api.domains.forget(settings.domain)
    return json_reply(request, True)


@app.route("/v1/domain/<name>/<address>", methods=["DELETE"])
@handled
async def delete_report_address(api: API, request: Any, name: str, address: str) -> bytes:
    account, settings = await _settings(api, request, name)
    updated = await api.domains.remove_report_address(account, settings.domain, address)
    return json_reply(request, domain_shape(api, updated))


# -- /v1/dns ------------------------------------------------------------------------------------


@app.route("/v1/dns/<name>/<variant>", methods=["GET"])
@handled
async def dns_records(api: API, request: Any, name: str, variant: str) -> bytes:
    account, settings = await _settings(api, request, name)
    if variant in ("recommended", "selfhosted"):
        return json_reply(request, await api.domains.records(account, settings.domain, variant))
    if variant == "status":
        found = await api.domains.check(settings)
        return json_reply(request, {**found.items, "remarks": found.remarks,
                                    "checked": _time(found.checked)})
    raise NotFound(variant)


# -- /v1/spf ------------------------------------------------------------------------------------


@app.route("/v1/spf/<name>", methods=["GET"])
@handled
async def spf_mechanisms(api: API, request: Any, name: str) -> bytes:
    _, settings = await _settings(api, request, name)
    return json_reply(request, list(settings.spf_mechanisms))


@app.route("/v1/spf/<name>", methods=["POST"])
@handled
async def add_spf_mechanisms(api: API, request: Any, name: str) -> bytes:
    account, settings = await _settings(api, request, name)
    body = await _changes(api, request)
    added = [m for m in parse_spf_mechanisms(body) if m not in settings.spf_mechanisms]
    updated = await api.storage.update_domain_settings(
        account, settings.domain, spf_mechanisms=(*settings.spf_mechanisms, *added))
    api.domains.forget(settings.domain)
    return json_reply(request, list(updated.spf_mechanisms))


@app.route("/v1/spf/<name>", methods=["DELETE"])
@handled
async def reset_spf_mechanisms(api: API, request: Any, name: str) -> bytes:
    account, settings = await _settings(api, request, name)
    await api.storage.update_domain_settings(account, settings.domain, spf_mechanisms=())
    return json_reply(request, [])


def parse_spf_mechanisms(body: dict[str, Any]) -> list[str]:
    """``{"ip": "4.5.6.7/24", "include": "example2.com"}`` (a value or a list each) as SPF terms."""
    terms = []
    for name, values in body.items():
        for value in values if isinstance(values, list) else [values]:
            if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value.strip()):
                raise BadRequest(f"{name}: {value!r} is not a value an SPF record can hold")
            value = value.strip().rstrip("/")
            if name in ("ip", "ip4", "ip6"):
                try:
                    network = ipaddress.ip_network(value, strict=False)
                except ValueError:
                    raise BadRequest(f"{name}: {value!r} is not an IP address or network") from None
                kind = f"ip{network.version}"
                if name != "ip" and name != kind:
                    raise BadRequest(f"{name}: {value!r} is an IPv{network.version} address")
                single = network.prefixlen == network.max_prefixlen
                terms.append(f"{kind}:{network.network_address if single else network}")
            elif name in SPF_MECHANISMS:
                terms.append(f"{name}:{domain_key(value)}")
            else:
                raise BadRequest(f"unknown SPF mechanism {name!r} (one of ip, {', '.join(SPF_MECHANISMS)})")
    if not terms:
        raise BadRequest("name at least one mechanism")
    return terms


# -- /v1/dkimkey, /v1/dkimkeys ---------------------------------------------------------------


async def _signing_key(api: API, request: Any, name: str) -> DkimKey:
    """The key that signs the domain's mail now (RSA first), else the one that will."""
    account, settings = await _settings(api, request, name)
    keys = await api.domains.keystore.keys(domain=settings.domain, account_id=account)
    keys.sort(key=lambda k: (k.state != ACTIVE, k.algorithm != "rsa", k.selector))
    if not keys:
        raise NotFound(name)
    return keys[0]


@app.route("/v1/dkimkey/<name>", methods=["GET"])
@handled
async def dkim_key(api: API, request: Any, name: str) -> bytes:
    key = await _signing_key(api, request, name)
    view = public_view(key)
    return json_reply(request, {"selector": key.selector, "algorithm": view["algorithm"],
                                "public": view["public"]})


@app.route("/v1/dkimkey/<name>/<selector>", methods=["GET"])
@handled
async def dkim_key_part(api: API, request: Any, name: str, selector: str) -> bytes:
    """``selector`` is the part asked for (the path is the one keys are installed at)."""
    part = selector
    key = await _signing_key(api, request, name)
    view = public_view(key)
    values = {"publickey": view["public"], "algorithm": view["algorithm"], "selector": key.selector}
    if part not in values:
        raise NotFound(part)
    return text(request, values[part])


@app.route("/v1/dkimkey/<name>/<selector>", methods=["POST"])
@handled
async def install_dkim_key(api: API, request: Any, name: str, selector: str) -> bytes:
    account, settings = await _settings(api, request, name)
    body = await _changes(api, request)
    private_key = body.get("privatekey")
    if private_key is not None and not isinstance(private_key, str):
        raise BadRequest("privatekey must be a PEM text")
    always = body.get("always", False)
    if not isinstance(always, bool):
        raise BadRequest("always must be true or false")
    start, end = (_moment(body.get(field), field) for field in ("start", "end"))
    if start is not None and end is not None and end <= start:
        raise BadRequest("end is not after start")
    try:
        key = await api.domains.keystore.install(account, settings.domain, selector, private_key, always,
                                                 start, end)
    except DkimKeyError as exc:
        raise BadRequest(str(exc)) from None
    except Conflict:
        raise BadRequest(f"{settings.domain} has a key under the selector {selector!r} already",
                         409) from None
    api.domains.forget(settings.domain)
    return json_reply(request, public_view(key))


@app.route("/v1/dkimkey/<name>/<selector>", methods=["DELETE"])
@handled
async def delete_dkim_key(api: API, request: Any, name: str, selector: str) -> bytes:
    account, settings = await _settings(api, request, name)
    await api.storage.delete_dkim_key(account, settings.domain, selector)
    api.domains.forget(settings.domain)
    return json_reply(request, True)


@app.route("/v1/dkimkeys", methods=["GET"])
@app.route("/v1/dkimkeys/<name>", methods=["GET"])
@app.route("/v1/dkimkeys/<name>/<selector>", methods=["GET"])
@handled
async def dkim_keys(api: API, request: Any, name: str | None = None, selector: str | None = None) -> bytes:
    account = await api.account(request)
    if name is not None:
        await api.storage.domain_settings(account, domain_key(name))  # 404 for another's domain
    keys = await api.domains.keystore.keys(domain=domain_key(name) if name else None, account_id=account,
                                           selector=selector)
    return json_reply(request, [public_view(k) for k in keys])


def _moment(value: Any, field: str) -> float | None:
    if value in (None, ""):
        return None
    try:
        moment = datetime.datetime.fromisoformat(str(value))
    except ValueError:
        raise BadRequest(f"{field} must be a time, yyyy-mm-dd hh:mm:ss") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()
