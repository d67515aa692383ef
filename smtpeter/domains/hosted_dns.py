"""Our authoritative DNS server for ``[domains] hosted_zone``: what the recommended records point at.

Customers CNAME their DKIM selectors and ``_dmarc`` into this zone and ``include:`` our SPF record
(smtpeter/domains/records.py names them), so rotation, the daily DMARC ramp and SPF changes are
answered here from storage, never needing the customer's DNS to change. The parent zone delegates
``hosted_zone`` to this server (NS records, with glue for our name servers' addresses).

Answers per name, ``D`` a sender domain:

* ``SEL._domainkey.D.ZONE`` TXT: the domain's key with that selector (next, active or retired);
* ``_spf.D.ZONE`` TXT: our sending addresses as ip4:/ip6: plus the domain's extra mechanisms;
* ``_dmarc.D.ZONE`` TXT: the DMARC record with today's ramp;
* ``D._report._dmarc.REPORT_DOMAIN`` TXT ``v=DMARC1`` when our report mailbox's domain is in the zone
  (RFC 7489 §7.1: the report receiver agrees to get D's reports);
* SOA and NS at the apex.

Other names in the zone: NXDOMAIN, except names without underscore labels, which may be empty
non-terminals above a sender domain (``com.ZONE``); they get NODATA, because an NXDOMAIN there
tells resolvers that nothing exists below it (RFC 8020). Names outside the zone: REFUSED.
"""

from __future__ import annotations

import datetime
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.names import dns, server

from smtpeter.domains import records
from smtpeter.domains.model import DkimKey, DomainSettings

log = Logger()

ANSWER_TTL = 300  # a key, SPF or ramp change reaches resolvers within five minutes
NEGATIVE_TTL = 60  # a new sender domain is answered within a minute of being added
CACHE_SECONDS = 60.0  # storage is read at most once a minute per domain
CACHE_ENTRIES = 10_000
UDP_PLAIN_LIMIT = 512  # octets of a UDP answer to a query without EDNS (RFC 1035 §4.2.1)
UDP_EDNS_LIMIT = 1232  # DNS flag day 2020: no IP fragmentation


@dataclass
class Answer:
    """One response: its code and sections (twisted.names records); ``authoritative`` is the AA bit."""

    rcode: int = dns.OK
    answers: list[dns.RRHeader] = field(default_factory=list)
    authority: list[dns.RRHeader] = field(default_factory=list)
    authoritative: bool = True


def parse_listen(description: str) -> tuple[str, int]:
    """(interface, port) of a listen description as in ``[domains] dns_listen``: a Twisted endpoint
    string ("tcp:53:interface=192.0.2.1", "udp:port=5353"); we serve UDP and TCP on that port."""
    parts, current, escaped = [], "", False
    for char in description:
        if escaped:
            current, escaped = current + char, False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    if parts[0] in ("tcp", "udp", "tcp6", "udp6"):
        parts = parts[1:]
    interface, port = "", None
    for index, part in enumerate(parts):
        key, equals, value = part.partition("=")
        if equals and key == "interface":
            interface = value
        elif equals and key == "port":
            port = value
        elif not equals and index == 0:
            port = part
        else:
            raise ValueError(f"{description!r}: {part!r} is not port or interface")
    if port is None or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{description!r} names no port")
    return interface, int(port)


def _txt(name: str, value: str) -> dns.RRHeader:
    data = value.encode()
    strings = [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]  # 255 octets a string
    return dns.RRHeader(name, dns.TXT, ttl=ANSWER_TTL, payload=dns.Record_TXT(*strings, ttl=ANSWER_TTL),
                        auth=True)


class HostedDNS:
    """Answers the hosted zone from ``settings_for(domain)`` (None: not a sender domain) and
    ``keys_for(domain)``, both cached CACHE_SECONDS."""

    def __init__(
        self,
        operator: records.Operator,
        settings_for: Callable[[str], Awaitable[DomainSettings | None]],
        keys_for: Callable[[str], Awaitable[Sequence[DkimKey]]],
        reactor: Any = None,
        clock: Any = None,
        nameservers: Sequence[str] = (),
    ) -> None:
        if not operator.hosted_zone:
            raise ValueError("no hosted zone to serve")
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.operator = operator
        self.zone = operator.hosted_zone.rstrip(".").lower()
        # NS names of the zone (with glue in the parent); by default one ns. name inside it.
        self.nameservers = [n.rstrip(".").lower() for n in nameservers] or [f"ns.{self.zone}"]
        report_domain = operator.dmarc_address.rpartition("@")[2].rstrip(".").lower()
        self._report_suffix = (f"._report._dmarc.{report_domain}"
                               if report_domain and self._in_zone(report_domain) else None)
        self._settings_for = settings_for
        self._keys_for = keys_for
        self._settings: dict[str, tuple[float, DomainSettings | None]] = {}
        self._keys: dict[str, tuple[float, Sequence[DkimKey]]] = {}
        self._factory = _Factory(self)
        self._ports: list[Any] = []
        self.port = 0

    # -- answers ---------------------------------------------------------------------------------

    def _in_zone(self, name: str) -> bool:
        return name == self.zone or name.endswith("." + self.zone)

    def _soa(self) -> dns.RRHeader:
        # No zone transfers, so the serial only has to grow: the time will do.
        soa = dns.Record_SOA(mname=self.nameservers[0], rname=f"hostmaster.{self.zone}",
                             serial=int(self.clock.seconds()) & 0xFFFFFFFF, refresh=3600, retry=600,
                             expire=86400, minimum=NEGATIVE_TTL, ttl=NEGATIVE_TTL)
        return dns.RRHeader(self.zone, dns.SOA, ttl=NEGATIVE_TTL, payload=soa, auth=True)

    def _negative(self, rcode: int = dns.OK) -> Answer:
        """NODATA (rcode OK) or NXDOMAIN, with the SOA for negative caching (RFC 2308)."""
        return Answer(rcode=rcode, authority=[self._soa()])

    def _today(self) -> datetime.date:
        return datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.UTC).date()

    async def answer(self, name: str, qtype: int) -> Answer:
        """The response to a query for ``name`` (text, any case) and ``qtype`` (a twisted.names type)."""
        name = name.rstrip(".").lower()
        if not self._in_zone(name):
            return Answer(rcode=dns.EREFUSED, authoritative=False)
        wanted = (qtype, dns.ALL_RECORDS)
        if name == self.zone:
            found = []
            if dns.SOA in wanted:
                found.append(self._soa())
            if dns.NS in wanted:
                found += [dns.RRHeader(name, dns.NS, ttl=ANSWER_TTL, auth=True,
                                       payload=dns.Record_NS(ns, ttl=ANSWER_TTL)) for ns in self.nameservers]
            return Answer(answers=found) if found else self._negative()
        value = await self._txt_value(name)
        if value is None:
            return self._negative(dns.OK if await self._may_have_children(name) else dns.ENAME)
        return Answer(answers=[_txt(name, value)]) if dns.TXT in wanted else self._negative()

    async def _txt_value(self, name: str) -> str | None:
        """The TXT record at ``name``, or None when there is nothing there."""
        if self._report_suffix is not None and name.endswith(self._report_suffix):
            domain = name[: -len(self._report_suffix)]
            return "v=DMARC1" if domain and await self._settings_of(domain) is not None else None
        parsed = records.parse_hosted_name(name, self.zone)
        if parsed is None:
            return None
        if parsed.kind == "dkim":
            keys = await self._keys_of(parsed.domain)
            return next((k.public_record for k in keys if k.selector.lower() == parsed.selector), None)
        settings = await self._settings_of(parsed.domain)
        if settings is None:
            return None
        if parsed.kind == "spf":
            return records.spf_record(settings, self.operator)
        return records.dmarc_record(settings.dmarc, self._today(), self.operator)

    async def _may_have_children(self, name: str) -> bool:
        """Whether ``name`` may be an empty non-terminal: above a sender domain, or D's _domainkey."""
        labels = name[: -len(self.zone) - 1].split(".")
        if not any(label.startswith("_") for label in labels):
            return True
        if labels[0] == "_domainkey" and len(labels) > 1:
            return await self._settings_of(".".join(labels[1:])) is not None
        return False

    # -- storage, cached ---------------------------------------------------------------------------

    async def _settings_of(self, domain: str) -> DomainSettings | None:
        now = self.clock.seconds()
        cached = self._settings.get(domain)
        if cached is not None and now < cached[0]:
            return cached[1]
        settings = await self._settings_for(domain)
        _remember(self._settings, domain, (now + CACHE_SECONDS, settings))
        return settings

    async def _keys_of(self, domain: str) -> Sequence[DkimKey]:
        now = self.clock.seconds()
        cached = self._keys.get(domain)
        if cached is not None and now < cached[0]:
            return cached[1]
        keys = await self._keys_for(domain)
        _remember(self._keys, domain, (now + CACHE_SECONDS, keys))
        return keys

    def forget(self, domain: str) -> None:
        """Drop what is cached for ``domain`` (after a change we know of, e.g. a rotation)."""
        self._settings.pop(domain, None)
        self._keys.pop(domain, None)

    # -- network -----------------------------------------------------------------------------------

    async def listen(self, description: str) -> None:
        """UDP and TCP on the port of ``description`` (see parse_listen); port 0: one free for both."""
        interface, port = parse_listen(description)
        for _ in range(20 if port == 0 else 1):
            udp = self.reactor.listenUDP(port, dns.DNSDatagramProtocol(self._factory), interface=interface)
            chosen = udp.getHost().port
            try:
                tcp = self.reactor.listenTCP(chosen, self._factory, interface=interface)
            except CannotListenError:
                await udp.stopListening()
                if port != 0:
                    raise
                continue
            self._ports += [udp, tcp]
            self.port = chosen
            log.info("hosted DNS for {zone} listening on {interface}:{port} (UDP and TCP)",
                     zone=self.zone, interface=interface or "*", port=chosen)
            return
        raise CannotListenError(interface, 0, OSError("no port free for both UDP and TCP"))

    async def stop(self) -> None:
        ports, self._ports = self._ports, []
        for port in ports:
            await port.stopListening()
        await self._factory.close_connections()


class _Factory(server.DNSServerFactory):
    """twisted.names' server, its answers ours: AA bit, SOA in negative answers, REFUSED outside."""

    def __init__(self, hosted: HostedDNS) -> None:
        super().__init__(authorities=[])
        self.hosted = hosted
        self._closed: list[defer.Deferred[None]] = []

    def handleQuery(self, message: dns.Message, protocol: Any, address: Any) -> defer.Deferred[None]:
        query = message.queries[0]
        if query.cls not in (dns.IN, dns.ANY):
            work = defer.succeed(Answer(rcode=dns.EREFUSED, authoritative=False))
        else:
            name = query.name.name.decode("ascii", errors="replace")
            work = defer.ensureDeferred(self.hosted.answer(name, query.type))
        return work.addCallbacks(self._reply, self._failed, callbackArgs=(protocol, message, address),
                                 errbackArgs=(protocol, message, address))

    def _reply(self, answer: Answer, protocol: Any, message: dns.Message, address: Any) -> None:
        response = self._responseFromMessage(message=message, rCode=answer.rcode, answers=answer.answers,
                                             authority=answer.authority)
        response.auth = answer.authoritative
        response.maxSize = 0  # twisted would cut records in half at maxSize: we truncate whole, below
        if address is not None:
            limit = UDP_PLAIN_LIMIT
            for record in message.additional:
                if record.type == dns.OPT:  # its class is the client's UDP payload size (RFC 6891)
                    limit = max(UDP_PLAIN_LIMIT, min(record.cls, UDP_EDNS_LIMIT))
            if len(response.toStr()) > limit:
                response.trunc = True  # the client asks again over TCP
                response.answers, response.authority = [], []
        self.sendReply(protocol, response, address)

    def _failed(self, failure: Any, protocol: Any, message: dns.Message, address: Any) -> None:
        log.failure("hosted DNS: answering {query} failed", failure, query=message.queries[0])
        self.sendReply(protocol, self._responseFromMessage(message=message, rCode=dns.ESERVER), address)

    def connectionLost(self, protocol: Any) -> None:
        super().connectionLost(protocol)
        if not self.connections:
            waiting, self._closed = self._closed, []
            for closed in waiting:
                closed.callback(None)

    async def close_connections(self) -> None:
        if self.connections:
            closed: defer.Deferred[None] = defer.Deferred()
            self._closed.append(closed)
            for protocol in list(self.connections):
                protocol.transport.loseConnection()
            await closed


def _remember(cache: dict[str, Any], key: str, entry: Any) -> None:
    cache.pop(key, None)
    while len(cache) >= CACHE_ENTRIES:
        del cache[next(iter(cache))]
    cache[key] = entry
