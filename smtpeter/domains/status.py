"""Live DNS checks of a sender domain (GET /v1/dns/NAME/status, ``smtpeter domain check``).

Each item of STATUS_ITEMS is OK or ERROR with a remark a person can act on. Everything is asked
through our resolver (``dns.nameservers``), SPF too: pyspf evaluates it (includes, redirects,
``all``, the 10-lookup limit), its DNS going through a dnspython resolver on the same nameservers.
"""

from __future__ import annotations

import binascii
import ipaddress
import re
import threading
import time
from base64 import b64decode
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import dns.exception
import dns.nameserver
import dns.resolver
import spf
from twisted.internet import defer, threads
from twisted.logger import Logger

from smtpeter.dns import DNSError, NoSuchDomain, NullMX, parse_nameserver, read_resolv_conf
from smtpeter.domains import records
from smtpeter.domains.model import ACTIVE, ERROR, NEXT, OK, DkimKey, DomainSettings, DomainStatus

log = Logger()

SPF_QUERY_TIME = 20.0  # seconds for one whole SPF evaluation (RFC 7208 §4.6.4 suggests at least 20)


# -- pyspf on our nameservers ------------------------------------------------------------------------

# pyspf asks the DNS through its module-level ``spf.DNSLookup``. Our hook sends each thread's lookups
# to the SPFLookup that thread evaluates for, so lookups with other nameservers (tests, several
# services) never mix; threads without one keep what was there before.
_current = threading.local()
_fallback_lookup: Callable[..., Any] = spf.DNSLookup


def _dispatch(name: str, qtype: str, strict: Any = True, timeout: float = 30) -> list[Any]:
    lookup = getattr(_current, "lookup", None)
    if lookup is None:
        return _fallback_lookup(name, qtype, strict, timeout)
    return lookup(name, qtype, strict, timeout)


def _install_hook() -> None:
    global _fallback_lookup
    if spf.DNSLookup is not _dispatch:
        _fallback_lookup, spf.DNSLookup = spf.DNSLookup, _dispatch


class SPFLookup:
    """Evaluates SPF with pyspf, its DNS on ``nameservers`` (as ``dns.nameservers``: "IP[:port]" strings
    or (ip, port); None: /etc/resolv.conf's). pyspf is synchronous: it runs in the reactor's threads."""

    def __init__(self, nameservers: Sequence[str | tuple[str, int]] | None = None, timeout: float = 5.0,
                 reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        servers = ([parse_nameserver(s) if isinstance(s, str) else s for s in nameservers]
                   if nameservers is not None else read_resolv_conf())
        self.resolver = dns.resolver.Resolver(configure=False)
        self.resolver.nameservers = [dns.nameserver.Do53Nameserver(ip, port) for ip, port in servers]
        self.resolver.timeout = timeout
        self.resolver.lifetime = timeout * 2
        self.resolver.cache = None  # each check is live; pyspf caches within one evaluation itself
        _install_hook()

    def __call__(self, name: str, qtype: str, strict: Any = True, timeout: float = 30) -> list[Any]:
        """pyspf's DNSLookup: [((name, qtype), value), ...]; no data or NXDOMAIN: []."""
        try:
            answer = self.resolver.resolve(name, qtype, lifetime=min(timeout, self.resolver.lifetime),
                                           search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as exc:
            raise spf.TempError(f"DNS {exc}") from None
        key = (name, qtype)
        if qtype in ("A", "AAAA"):
            return [(key, rdata.address) for rdata in answer]
        if qtype == "MX":
            return [(key, (rdata.preference, rdata.exchange)) for rdata in answer]
        if qtype == "PTR":
            return [(key, rdata.target.to_text(True)) for rdata in answer]
        if qtype in ("TXT", "SPF"):
            return [(key, rdata.strings) for rdata in answer]
        return []

    def _evaluate(self, address: str, sender: str, helo: str) -> tuple[str, str]:
        _current.lookup = self
        try:
            return spf.check2(i=address, s=sender, h=helo, querytime=SPF_QUERY_TIME)
        finally:
            _current.lookup = None

    def check(self, address: str, sender: str, helo: str) -> defer.Deferred[tuple[str, str]]:
        """pyspf's (result, explanation) for mail from ``address`` with MAIL FROM ``sender``:
        result is pass, fail, softfail, neutral, none, permerror or temperror."""
        def failed(failure: Any) -> tuple[str, str]:
            log.failure("SPF evaluation of {sender} for {address} failed", failure, sender=sender,
                        address=address)
            return "temperror", "the evaluation failed"

        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                         self._evaluate, address, sender, helo).addErrback(failed)


# -- the checks --------------------------------------------------------------------------------------

Outcome = tuple[bool, str]


def _tags(record: str) -> dict[str, str]:
    """A DKIM/DMARC tag list ("v=DKIM1; k=rsa; p=...") as a dict; later duplicates are ignored."""
    tags: dict[str, str] = {}
    for part in record.split(";"):
        tag, equals, value = part.partition("=")
        if equals:
            tags.setdefault(tag.strip().lower(), value.strip())
    return tags


def _dkim_public_key(record: str) -> bytes | None:
    """The key bytes of a DKIM record's p= (whitespace may fold the base64), or None if it has none."""
    value = _tags(record).get("p")
    if value is None:
        return None
    compact = re.sub(r"\s+", "", value)
    try:
        return b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        return compact.encode()  # not base64: still compared, and never equal to a real key


def _dns_problem(name: str, exc: DNSError) -> str:
    return f"{name} could not be looked up ({exc})"


async def _ownership(settings: DomainSettings, resolver: Any) -> Outcome:
    record = records.ownership_record(settings)
    try:
        found = await resolver.txt(record["name"])
    except NoSuchDomain:
        found = []
    if settings.validation_token in (value.strip() for value in found):
        return True, f"The ownership record {record['name']} is published"
    return False, f"The TXT record {record['name']} with the validation token is missing"


async def ownership_seen(settings: DomainSettings, resolver: Any) -> bool:
    """Whether the ownership TXT record is in DNS now (a failed lookup counts as not seen)."""
    try:
        seen, _ = await _ownership(settings, resolver)
    except DNSError:
        return False
    return seen


async def _validation(settings: DomainSettings, resolver: Any) -> Outcome:
    if settings.approved:
        return True, "The domain is approved"
    return await _ownership(settings, resolver)


async def _spf(settings: DomainSettings, operator: records.Operator, spf_lookup: SPFLookup) -> Outcome:
    """SPF as receivers evaluate it for our bounce (VERP) envelope, from every sending address."""
    domain = settings.bounces
    if not operator.sending_addresses:
        return False, "No sending addresses are configured ([domains] sending_addresses) to check SPF for"
    addresses = [str(ipaddress.ip_network(a.strip(), strict=False).network_address)
                 for a in operator.sending_addresses]
    results = await defer.gatherResults(
        [spf_lookup.check(address, "postmaster@" + domain, operator.mx_host) for address in addresses],
        consumeErrors=True)
    failed: dict[tuple[str, str], list[str]] = {}
    for address, (result, explanation) in zip(addresses, results, strict=True):
        if result != "pass":
            failed.setdefault((result, explanation), []).append(address)
    if not failed:
        return True, f"SPF of {domain} allows {', '.join(addresses)}"
    remarks = []
    for (result, explanation), which in failed.items():
        listed = ", ".join(which)
        explanation = re.sub(r"^SPF (Permanent|Temporary) Error: ", "", explanation)
        if result == "none":
            remarks.append(f"{domain} has no SPF record")
        elif result == "permerror":
            remarks.append(f"SPF of {domain} is broken for {listed} (permerror: {explanation})")
        elif result == "temperror":
            remarks.append(f"SPF of {domain} could not be evaluated for {listed} (temperror: {explanation})")
        else:
            remarks.append(f"SPF of {domain} does not allow {listed} ({result})")
    return False, "; ".join(remarks)


async def _published_key(key: DkimKey, resolver: Any) -> tuple[bool, str]:
    """Whether ``key`` is in DNS exactly as ours, and if not, why (for the remark)."""
    name = records.dkim_name(key.domain, key.selector)
    try:
        found = await resolver.txt(name)
    except NoSuchDomain:
        found = []
    except DNSError as exc:
        return False, _dns_problem(name, exc)
    keys = [k for k in (_dkim_public_key(value) for value in found) if k is not None]
    if not keys:
        return False, f"{name} is missing"
    if len(keys) > 1:
        return False, f"{name} has {len(keys)} DKIM records"
    if keys[0] != _dkim_public_key(key.public_record):
        return False, f"{name} has a different key" if keys[0] else f"{name} has a revoked (empty) key"
    return True, ""


def required_keys(keys: Sequence[DkimKey]) -> list[DkimKey]:
    """The keys that must be in DNS for DKIM to work: the signing (active) ones, or while none signs
    yet, the next ones."""
    active = [key for key in keys if key.state == ACTIVE]
    return active or [key for key in keys if key.state == NEXT]


async def _dkim(keys: Sequence[DkimKey], resolver: Any) -> tuple[bool, str, tuple[str, ...]]:
    if not keys:
        return False, "The domain has no DKIM keys", ()
    found = await _gather([_published_key(key, resolver) for key in keys])
    checked = list(zip(keys, found, strict=True))
    published = tuple(key.selector for key, (ok, _) in checked if ok)
    required = required_keys(keys)
    problems = [why for key, (ok, why) in checked if not ok and key in required]
    if problems:
        return False, "; ".join(problems), published
    remark = f"DKIM keys {', '.join(key.selector for key in required)} are published"
    waiting = [why for key, (ok, why) in checked if not ok and key.state == NEXT]
    if waiting:
        remark += "; not yet the next: " + "; ".join(waiting)
    return True, remark, published


async def _dmarc(settings: DomainSettings, operator: records.Operator, resolver: Any) -> Outcome:
    domain = settings.domain
    name = records.dmarc_name(domain)
    try:
        found = await resolver.txt(name)
    except NoSuchDomain:
        found = []
    dmarc = [value for value in found if re.match(r"\s*v\s*=\s*DMARC1\s*(;|$)", value)]
    if not dmarc:
        return False, f"{name} has no DMARC record"
    if len(dmarc) > 1:
        return False, f"{name} has {len(dmarc)} DMARC records (receivers then ignore them all)"
    tags = _tags(dmarc[0])
    policy = tags.get("p", "").lower()
    if policy not in ("none", "quarantine", "reject"):
        return False, f"The DMARC record of {domain} has no valid policy (p=)"
    aspf, adkim = tags.get("aspf", "r").lower(), tags.get("adkim", "r").lower()
    if aspf not in ("r", "s") or adkim not in ("r", "s"):
        return False, f"The DMARC record of {domain} has an invalid aspf or adkim"
    if aspf == "s" and settings.bounces.lower() != domain.lower():
        return False, (f"DMARC of {domain} requires strict SPF alignment (aspf=s), but bounces come from "
                       f"{settings.bounces}; use aspf=r")
    # adkim=s is fine: we sign with d= the sender domain itself.
    remark = f"DMARC of {domain}: p={policy}, pct={tags.get('pct', '100')}"
    rua = tags.get("rua", "").lower()
    if operator.dmarc_address and f"mailto:{operator.dmarc_address.lower()}" not in rua:
        remark += f"; aggregate reports do not go to {operator.dmarc_address}"
    return True, remark


def _host(name: str) -> str:
    return name.strip().strip("[]").rstrip(".").lower()


async def _mx(settings: DomainSettings, operator: records.Operator, resolver: Any) -> Outcome:
    domain, ours = settings.bounces, _host(operator.mx_host)
    try:
        result = await resolver.mx(domain)
    except NoSuchDomain:
        return False, f"Bounce domain {domain} does not exist; it needs an MX record pointing to {ours}"
    except NullMX:
        return False, f"Bounce domain {domain} refuses mail (null MX); its MX needs to point to {ours}"
    if result.implicit:
        return False, f"Bounce domain {domain} has no MX record; it needs one pointing to {ours}"
    hosts = [host.host for host in result.hosts]
    if ours not in hosts:
        return False, f"Bounce domain {domain} is not pointing to {ours} (its MX: {', '.join(hosts)})"
    return True, f"Bounce domain {domain} is pointing to {ours}"


async def _tracking(settings: DomainSettings, operator: records.Operator, resolver: Any) -> Outcome:
    host, target = _host(settings.tracking), _host(operator.tracking_target)
    if host == target:
        return True, f"Tracking host {host} is ours"
    try:
        if await resolver.cname(host) == target:
            return True, f"Tracking host {host} points to {target}"
        theirs = {str(ipaddress.ip_address(a)) for a in await resolver.addresses(host)}
    except NoSuchDomain:
        return False, f"Tracking host {host} does not exist; it needs to point to {target}"
    if not theirs:
        return False, f"Tracking host {host} has no address; it needs to point to {target}"
    try:
        ours = {str(ipaddress.ip_address(a)) for a in await resolver.addresses(target)}
    except DNSError as exc:
        return False, _dns_problem(target, exc)
    if not theirs <= ours:
        return False, (f"Tracking host {host} resolves to {', '.join(sorted(theirs - ours))}, "
                       f"not to {target}")
    return True, f"Tracking host {host} resolves to {target}"


async def _gather(checks: list[Awaitable[Any]]) -> list[Any]:
    """Run checks side by side; the first unexpected exception is raised as itself."""
    try:
        return await defer.gatherResults([defer.ensureDeferred(c) for c in checks], consumeErrors=True)
    except defer.FirstError as error:
        error.subFailure.raiseException()
        raise  # unreachable: raiseException raises


async def _safely(check: Awaitable[Any], *extra: Any) -> Any:
    """A lookup that failed (SERVFAIL, timeouts) is that item's error, not the whole check's."""
    try:
        return await check
    except DNSError as exc:
        return (False, f"A DNS lookup failed: {exc}", *extra)


async def check(settings: DomainSettings, keys: Sequence[DkimKey], operator: records.Operator,
                resolver: Any, spf_lookup: SPFLookup, clock: Any = None) -> DomainStatus:
    """Every item of STATUS_ITEMS, checked live (``resolver`` best made with cache_answers=False, so a
    record the customer just fixed shows at once)."""
    validation, spf_outcome, dkim, dmarc, mx, tracking = await _gather([
        _safely(_validation(settings, resolver)),
        _safely(_spf(settings, operator, spf_lookup)),
        _safely(_dkim(keys, resolver), ()),
        _safely(_dmarc(settings, operator, resolver)),
        _safely(_mx(settings, operator, resolver)),
        _safely(_tracking(settings, operator, resolver)),
    ])
    outcomes = {"validation": validation, "spf": spf_outcome, "dkim": dkim[:2], "dmarc": dmarc, "mx": mx,
                "tracking": tracking}
    return DomainStatus(
        domain=settings.domain,
        items={item: OK if ok else ERROR for item, (ok, _) in outcomes.items()},
        remarks={item: remark for item, (_, remark) in outcomes.items()},
        published_selectors=dkim[2],
        checked=clock.seconds() if clock is not None else time.time(),
    )
