"""Sender domains at work: registration and approval, live DNS checks, key rotation, and what
the outbound pipeline signs and bounces with (``authority``).

What happens when a domain's records are wrong (README, "Sender domains"): a DKIM key signs
only once the last check saw it published exactly as ours (a signature no one can verify is
worse than none: it reads as tampering); the bounce domain becomes the VERP return path only
while its MX points to us (else bounces would be lost), and the tracking host is used only
while it resolves to us (else every link would break). Until then the message goes out as it
would without the sender domain's setup: unsigned by it, with the customer's own envelope, with
links on ``http.public_url``. The status and its remarks say what to fix.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import defer, task
from twisted.logger import Logger

from smtpeter import dns
from smtpeter.address import domain_key
from smtpeter.domains import records, rotation, status
from smtpeter.domains.keys import KeyStore
from smtpeter.domains.model import DomainSettings, DomainStatus
from smtpeter.domains.sealing import Sealer, encryption_key
from smtpeter.mime.header import author
from smtpeter.outbound.job import SenderAuth
from smtpeter.storage import NotFound
from smtpeter.storage.models import StoredMessage

log = Logger()

AUTHORITY_SECONDS = 60.0  # how long a domain's keys and status are reused for its messages


class SettingError(ValueError):
    """A sender domain setting that cannot be used (the API answers 400 with it)."""


class SenderDomains:
    def __init__(self, storage: Any, keystore: KeyStore, resolver: Any, spf_lookup: Any,
                 operator: records.Operator, config: Any, clock: Any) -> None:
        self.storage = storage
        self.keystore = keystore
        self.resolver = resolver
        self.spf_lookup = spf_lookup
        self.operator = operator
        self.config = config  # the [domains] section
        self.clock = clock
        self._authorities: dict[tuple[str, str], tuple[float, SenderAuth | None]] = {}
        self._loop: task.LoopingCall | None = None
        self._running: defer.Deferred | None = None  # a round of checks under way
        self._stopping = False
        # Called when a domain's settings change (the receiver keeps its bounce domains by them).
        self.listeners: list[Callable[[], None]] = []

    @classmethod
    def for_config(cls, storage: Any, config: Any, reactor: Any, clock: Any = None) -> SenderDomains:
        """As the configuration has it: keys sealed with the configured key (ConfigError if it
        cannot be read), live checks through a resolver that keeps no answers (a record just
        fixed shows at once), SPF on the same nameservers."""
        sealer = Sealer(encryption_key(config))
        nameservers = [dns.parse_nameserver(n) for n in config.dns.nameservers] or None
        clock = clock or reactor
        resolver = dns.Resolver(reactor, nameservers, timeout=config.dns.timeout, clock=clock,
                                cache_answers=False)
        operator = records.Operator(
            config.domains.hosted_zone, tuple(config.domains.sending_addresses), config.domains.mx_host,
            config.domains.dmarc_address, urlsplit(config.public_url).hostname or config.hostname)
        spf_lookup = status.SPFLookup(nameservers, config.dns.timeout, reactor)
        return cls(storage, KeyStore(storage, sealer), resolver, spf_lookup, operator, config.domains, clock)

    # -- registration -------------------------------------------------------------------------

    async def register(self, account_id: str, name: str, changes: dict[str, Any]) -> DomainSettings:
        """POST /v1/domain/NAME: made on the first call (with its keys), approved on a later one
        once its ownership record is in DNS; settings changed on every call."""
        domain = domain_key(name)
        try:
            settings = await self.storage.domain_settings(account_id, domain)
        except NotFound:
            await self.storage.add_domain(account_id, domain)
            await self.keystore.setup_new_domain(account_id, domain, tuple(self.config.dkim_algorithms))
            self.forget(domain)
            settings = await self.storage.domain_settings(account_id, domain)
        else:
            if not settings.approved and await status.ownership_seen(settings, self.resolver):
                await self.storage.approve_domain(account_id, domain)
                self.forget(domain)
        if changes:
            await self.update(account_id, domain, changes)
        return await self.storage.domain_settings(account_id, domain)

    async def update(self, account_id: str, domain: str, changes: dict[str, Any]) -> DomainSettings:
        settings = await self.storage.domain_settings(account_id, domain)
        fields = settings_changes(settings, changes)
        self.forget(domain)
        return await self.storage.update_domain_settings(account_id, domain, **fields)

    async def remove_report_address(self, account_id: str, domain: str, address: str) -> DomainSettings:
        settings = await self.storage.domain_settings(account_id, domain)
        kept = tuple(a for a in settings.dmarc.addresses if a.lower() != address.lower())
        if len(kept) == len(settings.dmarc.addresses):
            raise NotFound(f"no report address {address!r} for {domain}")
        return await self.storage.update_domain_settings(
            account_id, domain, dmarc=replace(settings.dmarc, addresses=kept))

    # -- DNS ----------------------------------------------------------------------------------

    def today(self) -> datetime.date:
        return datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.UTC).date()

    async def records(self, account_id: str, domain: str, variant: str) -> list[dict[str, str]]:
        settings = await self.storage.domain_settings(account_id, domain)
        keys = await self.keystore.keys(domain=settings.domain, account_id=account_id)
        make = records.recommended if variant == "recommended" else records.selfhosted
        return make(settings, keys, self.operator, self.today())

    async def check(self, settings: DomainSettings) -> DomainStatus:
        """A live check of one domain: recorded, then the domain is approved if its ownership record
        showed up and its keys rotate as the result allows."""
        keys = await self.keystore.keys(domain=settings.domain, account_id=settings.account_id)
        found = await status.check(settings, keys, self.operator, self.resolver, self.spf_lookup, self.clock)
        await self.storage.record_domain_status(found)
        if not settings.approved and found.ok("validation"):
            await self.storage.approve_domain(settings.account_id, settings.domain)
        now = self.clock.seconds()
        actions = rotation.plan(keys, found.published_selectors, now, self.config.rotation_days,
                                self.config.retired_days, tuple(self.config.dkim_algorithms))
        if actions:
            await rotation.apply(self.keystore, self.storage, settings.account_id, settings.domain,
                                 actions, now)
        self.forget(settings.domain)
        return found

    async def check_named(self, account_id: str, domain: str) -> DomainStatus:
        return await self.check(await self.storage.domain_settings(account_id, domain_key(domain)))

    async def check_all(self) -> None:
        for settings in await self.storage.all_sender_domains():
            if self._stopping:
                return
            try:
                await self.check(settings)
            except Exception:
                log.failure("checking the DNS of {domain} failed", domain=settings.domain)

    def start(self) -> None:
        """Checks every domain each ``check_interval`` (the first after one interval: domains are
        checked as they are registered, and the last results are in storage)."""
        self._stopping = False

        def round_of_checks() -> defer.Deferred:
            self._running = defer.ensureDeferred(self.check_all())
            return self._running

        self._loop = task.LoopingCall(round_of_checks)
        self._loop.clock = self.clock
        self._loop.start(self.config.check_interval, now=False).addErrback(
            lambda failure: log.failure("the sender domain checks stopped", failure))

    def stop(self) -> defer.Deferred:
        """No more checks; fires once a round under way has ended (storage may close then)."""
        self._stopping = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        running, self._running = self._running, None
        if running is None or running.called:
            return defer.succeed(None)
        done: defer.Deferred = defer.Deferred()
        running.addBoth(lambda _: done.callback(None))
        return done

    # -- what outbound mail gets ------------------------------------------------------------

    def forget(self, domain: str) -> None:
        """``domain``'s settings changed: drop what was kept of them, tell the listeners."""
        for key in [k for k in self._authorities if k[1] == domain]:
            del self._authorities[key]
        for listener in self.listeners:
            listener()

    async def authority(self, message: StoredMessage) -> SenderAuth | None:
        """How ``message`` is authenticated: its From domain's published keys, bounce domain and
        tracking host, each only while the last check found it right (module docstring)."""
        address = author(bytes(message.mime[:256 * 1024]))
        if address is None:
            return None
        domain = domain_key(address.rpartition("@")[2])
        key = (message.account_id, domain)
        now = self.clock.seconds()
        cached = self._authorities.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        auth = await self._authority(message.account_id, domain, now)
        if len(self._authorities) > 10_000:
            self._authorities.clear()
        self._authorities[key] = (now + AUTHORITY_SECONDS, auth)
        return auth

    async def _authority(self, account_id: str, domain: str, now: float) -> SenderAuth | None:
        try:
            settings = await self.storage.domain_settings(account_id, domain)
        except NotFound:
            return None
        if not settings.approved:
            return None
        found = await self.storage.domain_status(domain)
        published = found.published_selectors if found is not None else ()
        signing = await self.keystore.signing_keys(domain, account_id, published, now)
        mx_ok = found is not None and found.ok("mx")
        tracking_ok = found is not None and found.ok("tracking")
        scheme = "https" if settings.https else "http"
        return SenderAuth(domain, tuple(signing), settings.bounces if mx_ok else None,
                          f"{scheme}://{settings.tracking}" if tracking_ok else None)


def settings_changes(settings: DomainSettings, changes: dict[str, Any]) -> dict[str, Any]:
    """SMTPeter's settings (bounces, tracking, https, policy, percentage, startdate, enddate,
    address) as storage fields; SettingError for a value that cannot be used."""
    known = {"bounces", "tracking", "https", "policy", "percentage", "startdate", "enddate", "address"}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise SettingError(f"unknown setting {unknown[0]!r}")
    fields: dict[str, Any] = {}
    for name in ("bounces", "tracking"):
        if name in changes:
            fields[name] = _own_host(settings.domain, name, changes[name])
    if "https" in changes:
        if not isinstance(changes["https"], bool):
            raise SettingError("https must be true or false")
        fields["https"] = changes["https"]
    dmarc = settings.dmarc
    if "policy" in changes:
        if changes["policy"] not in ("none", "quarantine", "reject"):
            raise SettingError("policy must be none, quarantine or reject")
        dmarc = replace(dmarc, policy=changes["policy"])
    if "percentage" in changes:
        value = changes["percentage"]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
            raise SettingError("percentage must be a whole number from 0 to 100")
        dmarc = replace(dmarc, percentage=value)
    for name, attribute in (("startdate", "start"), ("enddate", "end")):
        if name in changes:
            dmarc = replace(dmarc, **{attribute: _date(name, changes[name])})
    if dmarc.start and dmarc.end and dmarc.end < dmarc.start:
        raise SettingError("enddate is before startdate")
    if "address" in changes:
        addresses = changes["address"] if isinstance(changes["address"], list) else [changes["address"]]
        for address in addresses:
            if not isinstance(address, str) or address.count("@") != 1 or not address.split("@")[0]:
                raise SettingError(f"address {address!r} is not an e-mail address")
            if not settings.approved:
                raise SettingError("report addresses can be added once the domain is approved")
        merged = list(dmarc.addresses)
        merged += [a for a in addresses if a.lower() not in {m.lower() for m in merged}]
        dmarc = replace(dmarc, addresses=tuple(merged))
    if dmarc != settings.dmarc:
        fields["dmarc"] = dmarc
    return fields


def _own_host(domain: str, name: str, value: Any) -> str:
    """A bounce or tracking host: a name under the domain, so SPF and DMARC align. Never the domain
    itself: its MX would take the customer's own mail, and a CNAME cannot stand at a zone's apex."""
    if not isinstance(value, str) or not value.strip():
        raise SettingError(f"{name} must be a host name")
    host = domain_key(value)
    labels = host.split(".")
    if any(not label or len(label) > 63 or not all(c.isalnum() or c == "-" for c in label)
           for label in labels) or len(host) > 253:
        raise SettingError(f"{name} {value!r} is not a host name")
    if not host.endswith("." + domain):
        raise SettingError(f"{name} must be a name under {domain} (such as {name}.{domain}), not {value!r}")
    return host


def _date(name: str, value: Any) -> datetime.date | None:
    if value in (None, ""):
        return None
    try:
        return datetime.date.fromisoformat(str(value)[:10])
    except ValueError:
        raise SettingError(f"{name} must be a date, yyyy-mm-dd") from None

