"""The DNS records a sender domain publishes (GET /v1/dns/NAME/recommended and /selfhosted).

Two variants, as SMTPeter's (spec §2.10):

* **recommended**: CNAMEs and an ``include:`` into ``hosted_zone``, a zone our own authoritative
  server answers (smtpeter/domains/hosted_dns.py). The customer publishes them once; key rotation,
  the daily DMARC ramp and SPF changes then happen in our zone without their DNS changing.
* **selfhosted**: the same content as plain records (DKIM TXT with the key, SPF with our addresses,
  DMARC TXT with today's ramp), for customers who cannot CNAME; they must follow rotation and the
  ramp themselves.

Hosted names are the customer's record name with the hosted zone appended
(``zero._domainkey.example.com`` → ``zero._domainkey.example.com.HOSTED_ZONE``), and ``_spf.DOMAIN``
for the hosted SPF record, so a person reading either zone sees at once what belongs to what.
``hosted_name``/``parse_hosted_name`` are that mapping, shared with the server.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import quote

from smtpeter.domains.model import SELECTORS, DkimKey, DmarcPolicy, DomainSettings

MAX_NAME_LENGTH = 253  # octets of a DNS name in text form, without the final dot
MX_PREFERENCE = 10


@dataclass(frozen=True)
class Operator:
    """What the operator's configuration says about the records we hand out."""

    hosted_zone: str  # the zone our hosted DNS serves; "" when there is none
    sending_addresses: tuple[str, ...]  # addresses (or networks) mail leaves from, for SPF
    mx_host: str  # where bounce domains' MX points
    dmarc_address: str  # our DMARC aggregate report mailbox (always in rua)
    tracking_target: str  # the host of http.public_url: tracking hosts CNAME (or A/AAAA) to it


# -- names -----------------------------------------------------------------------------------------


def dkim_name(domain: str, selector: str) -> str:
    return f"{selector}._domainkey.{domain}"


def dmarc_name(domain: str) -> str:
    return f"_dmarc.{domain}"


def spf_name(domain: str) -> str:
    """The hosted SPF record's name before the zone is appended (only our zone has it)."""
    return f"_spf.{domain}"


def hosted_name(name: str, zone: str) -> str:
    return f"{name}.{zone}"


class HostedName(NamedTuple):
    kind: str  # "dkim", "spf" or "dmarc"
    domain: str
    selector: str | None  # for "dkim"


def parse_hosted_name(name: str, zone: str) -> HostedName | None:
    """What a name in the hosted zone stands for, or None for any other name (apex, unknown shape)."""
    name, zone = name.rstrip(".").lower(), zone.rstrip(".").lower()
    if not name.endswith("." + zone):
        return None
    labels = name[: -len(zone) - 1].split(".")
    if len(labels) >= 2 and labels[0] in ("_spf", "_dmarc") and _plain(labels[1:]):
        return HostedName(labels[0].lstrip("_"), ".".join(labels[1:]), None)
    if len(labels) >= 3 and labels[1] == "_domainkey" and _plain(labels[2:]) and labels[0]:
        return HostedName("dkim", ".".join(labels[2:]), labels[0])
    return None


def _plain(labels: list[str]) -> bool:
    """A sender domain's labels: no underscore labels (those are ours), none empty."""
    return all(label and not label.startswith("_") for label in labels)


def ownership_record(settings: DomainSettings) -> dict[str, str]:
    """The TXT record that proves the customer controls the domain (spec §2.9)."""
    token = settings.validation_token
    return {"name": f"smtpeter-{token[:12].lower()}.{settings.domain}", "type": "TXT", "value": token}


# -- record contents -------------------------------------------------------------------------------


def address_mechanisms(addresses: Sequence[str]) -> list[str]:
    """``ip4:``/``ip6:`` mechanisms for sending addresses or networks ("192.0.2.1", "2001:db8::/64")."""
    mechanisms = []
    for text in addresses:
        network = ipaddress.ip_network(text.strip(), strict=False)
        kind = "ip4" if network.version == 4 else "ip6"
        full = network.prefixlen == network.max_prefixlen
        mechanisms.append(f"{kind}:{network.network_address}" + ("" if full else f"/{network.prefixlen}"))
    return mechanisms


def spf_record(settings: DomainSettings, operator: Operator) -> str:
    """The SPF record with our addresses and the domain's extra mechanisms (the hosted one, and the
    self-hosted records' content)."""
    mechanisms = [*address_mechanisms(operator.sending_addresses), *settings.spf_mechanisms]
    return " ".join(["v=spf1", *mechanisms, "-all"])


def dmarc_ramp(policy: DmarcPolicy, today: datetime.date) -> tuple[str, int]:
    """(p, pct) on ``today``: ``none`` before ``start``; from ``start`` the policy with a percentage
    rising linearly from 0 to ``percentage`` on ``end``; the full percentage from ``end`` on (or from
    ``start`` when there is no later ``end``). No dates: the policy at its percentage."""
    if policy.policy == "none":
        return "none", policy.percentage
    if policy.start is not None and today < policy.start:
        return "none", 100
    if policy.start is not None and policy.end is not None and today < policy.end:
        elapsed = (today - policy.start).days
        total = (policy.end - policy.start).days
        return policy.policy, policy.percentage * elapsed // total  # rounds down: never ahead of the ramp
    return policy.policy, policy.percentage


def dmarc_record(policy: DmarcPolicy, today: datetime.date, operator: Operator) -> str:
    """The _dmarc TXT value for ``today``; relaxed alignment, since bounces use a subdomain (VERP)."""
    p, pct = dmarc_ramp(policy, today)
    addresses = [operator.dmarc_address] if operator.dmarc_address else []
    for address in policy.addresses:
        if address.lower() not in (a.lower() for a in addresses):
            addresses.append(address)
    # "," separates URIs and "!" starts a size limit (RFC 7489 §6.4): escape them inside an address.
    rua = ",".join("mailto:" + quote(address, safe="@+._-=~") for address in addresses)
    return f"v=DMARC1; p={p}; pct={pct}" + (f"; rua={rua}" if rua else "") + "; adkim=r; aspf=r"


def _record(name: str, rtype: str, value: str) -> dict[str, str]:
    return {"name": name, "type": rtype, "value": value}


def _key_order(key: DkimKey) -> tuple[int, int, str]:
    selectors = SELECTORS.get(key.algorithm, ())
    position = selectors.index(key.selector) if key.selector in selectors else len(selectors)
    return (0 if key.managed else 1, position, key.selector)


def _tracking_records(settings: DomainSettings, operator: Operator) -> list[dict[str, str]]:
    """CNAME to the tracking target, or A/AAAA when the target is an address (a CNAME cannot be)."""
    target = operator.tracking_target.strip("[]").rstrip(".").lower()
    if not target or target == settings.tracking.lower():
        return []
    try:
        address = ipaddress.ip_address(target)
    except ValueError:
        return [_record(settings.tracking, "CNAME", target)]
    return [_record(settings.tracking, "A" if address.version == 4 else "AAAA", str(address))]


def _start(settings: DomainSettings) -> list[dict[str, str]]:
    return [] if settings.approved else [ownership_record(settings)]


def _spf_names(settings: DomainSettings) -> list[str]:
    """SPF is checked at the envelope's domain: the bounce (VERP) domain, and the domain itself for
    mail sent with the customer's own envelope."""
    return list(dict.fromkeys([settings.bounces, settings.domain]))


# -- the two variants ------------------------------------------------------------------------------


def selfhosted(settings: DomainSettings, keys: Sequence[DkimKey], operator: Operator,
               today: datetime.date) -> list[dict[str, str]]:
    """Plain records with today's content: every key the domain has (next, active and retired are
    all published), SPF with our addresses, DMARC with today's ramp (it changes daily during a ramp),
    the bounce domain's MX, the tracking host."""
    domain = settings.domain
    records = _start(settings)
    records += [_record(dkim_name(domain, key.selector), "TXT", key.public_record)
                for key in sorted(keys, key=_key_order)]
    spf = spf_record(settings, operator)
    records += [_record(name, "TXT", spf) for name in _spf_names(settings)]
    records.append(_record(dmarc_name(domain), "TXT", dmarc_record(settings.dmarc, today, operator)))
    records.append(_record(settings.bounces, "MX", f"{MX_PREFERENCE} {operator.mx_host}"))
    return records + _tracking_records(settings, operator)


def recommended(settings: DomainSettings, keys: Sequence[DkimKey], operator: Operator,
                today: datetime.date) -> list[dict[str, str]]:
    """CNAMEs into our hosted zone: all three rotation selectors of every algorithm a managed key
    uses (so rotation never needs the customer), customer keys' selectors too; ``include:`` of the
    hosted SPF record; ``_dmarc`` CNAMEd so the ramp follows by itself.

    Without a hosted zone (or when a hosted name would be too long for DNS) there is nothing to point
    at: the self-hosted records are returned instead.
    """
    zone = operator.hosted_zone.rstrip(".").lower()
    domain = settings.domain
    selectors: list[str] = []
    for key in sorted(keys, key=_key_order):
        family = SELECTORS.get(key.algorithm, ()) if key.managed else (key.selector,)
        selectors += [s for s in family if s not in selectors]
    longest = max([spf_name(domain), dmarc_name(domain), *(dkim_name(domain, s) for s in selectors)],
                  key=len)
    if not zone or len(hosted_name(longest, zone)) > MAX_NAME_LENGTH:
        return selfhosted(settings, keys, operator, today)
    records = _start(settings)
    records += [_record(dkim_name(domain, s), "CNAME", hosted_name(dkim_name(domain, s), zone))
                for s in selectors]
    spf = f"v=spf1 include:{hosted_name(spf_name(domain), zone)} -all"
    records += [_record(name, "TXT", spf) for name in _spf_names(settings)]
    records.append(_record(dmarc_name(domain), "CNAME", hosted_name(dmarc_name(domain), zone)))
    records.append(_record(settings.bounces, "MX", f"{MX_PREFERENCE} {operator.mx_host}"))
    return records + _tracking_records(settings, operator)

