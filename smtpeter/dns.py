"""MX and address lookups for outbound delivery, inside the Twisted reactor.

dnspython builds and parses the messages; the reactor carries them (libraries.md §5). We do not use
dnspython's resolver: it blocks (or needs threads/asyncio), and owning the transport gives us EDNS, TCP
fallback and later DANE/MTA-STS without another rewrite.
"""

from __future__ import annotations

import ipaddress
import random
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
from twisted.internet import defer
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger
from twisted.protocols.basic import Int16StringReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

log = Logger()

EDNS_PAYLOAD = 1232  # DNS flag day 2020: avoids IP fragmentation
DEFAULT_NEGATIVE_TTL = 60  # no SOA in the answer: don't trust the absence of data for long
MAX_NEGATIVE_TTL = 3600
MAX_POSITIVE_TTL = 86400  # bound how long a changed MX can be ignored
RESOLV_CONF = "/etc/resolv.conf"


class DNSError(Exception):
    """A lookup failed; ``temporary`` tells delivery whether to retry later or bounce."""

    temporary: bool = False


class NoSuchDomain(DNSError):
    """NXDOMAIN (or a name that cannot exist in the DNS at all): permanent."""


class NullMX(DNSError):
    """The domain publishes a null MX (RFC 7505): it accepts no mail, so bounce at once."""


class TemporaryDNSError(DNSError):
    """SERVFAIL, REFUSED from every server, timeouts: retry later (RFC 5321 §5.1: these are transient)."""

    temporary = True


@dataclass(frozen=True)
class MXHost:
    preference: int
    host: str  # lower-case ASCII (A-labels), no trailing dot


@dataclass(frozen=True)
class MXResult:
    hosts: list[MXHost]
    implicit: bool  # no MX records: the domain itself is the mail host (RFC 5321 §5.1)


@dataclass(frozen=True)
class _Answer:
    """What the cache keeps for one (name, type): the final RRset's rdatas after following CNAMEs."""

    nxdomain: bool
    records: tuple[Any, ...]


class _Timeout(Exception):
    pass


# --- configuration ----------------------------------------------------------------------------------------


def parse_nameserver(text: str) -> tuple[str, int]:
    """"IP", "IP:port" or "[IPv6]:port" -> (ip, port), so config and resolv.conf share one syntax."""
    text = text.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r} is not [IP]:port")
        port_text = rest[1:] if rest else "53"
    else:
        try:
            return str(ipaddress.ip_address(text)), 53  # bare IPv4, or bare IPv6 (its colons are not a port)
        except ValueError:
            host, colon, port_text = text.rpartition(":")
            if not colon:
                raise ValueError(f"{text!r} is not an IP address") from None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address") from None
    if not (port_text.isascii() and port_text.isdigit() and 0 < int(port_text) < 65536):
        raise ValueError(f"{text!r}: bad port {port_text!r}")
    return str(address), int(port_text)


def read_resolv_conf(path: str | None = None) -> list[tuple[str, int]]:
    """The system's nameservers; 127.0.0.1 when there are none, as the C library does."""
    path = path or RESOLV_CONF
    servers = []
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                servers.append(parse_nameserver(fields[1]))
            except ValueError:
                log.warn("ignoring nameserver {server!r} in {path}", server=fields[1], path=path)
    return servers or [("127.0.0.1", 53)]


def _to_name(domain: str) -> dns.name.Name:
    """Absolute DNS name; U-labels become A-labels (UTS 46 mapping, so "BÜCHER.de" works too)."""
    try:
        if not domain.strip(".") or domain != domain.strip():
            raise dns.name.EmptyLabel
        return dns.name.from_unicode(domain, idna_codec=dns.name.IDNA_2008_Practical)
    except (dns.exception.DNSException, UnicodeError) as exc:
        # Such a name can never resolve, so this is as permanent as NXDOMAIN.
        raise NoSuchDomain(f"{domain!r} is not a valid domain name: {exc}") from None


def _text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


def _describe(server: tuple[str, int]) -> str:
    host, port = server
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- transports -------------------------------------------------------------------------------------------


@implementer(IReadDescriptor)
class _UDPExchange:
    """One query on its own random source port; ``done`` fires with a Message or an exception.

    A plain non-blocking socket registered with the reactor, rather than
    ``listenUDP``, whose ports log two lines each: a busy MTA makes thousands
    of lookups a second. ``done`` fires after the socket is closed, so nothing
    of ours is left in the reactor.
    """

    def __init__(
        self, reactor: Any, query: dns.message.Message, server: tuple[str, int], timeout: float
    ) -> None:
        self._reactor = reactor
        self._query = query
        self._server = server
        self._address = ipaddress.ip_address(server[0])
        self._timeout = timeout
        self._socket: socket.socket | None = None
        self._timer: Any = None
        self._finished = False
        self.done: defer.Deferred[Any] = defer.Deferred(self._cancel)

    def start(self) -> defer.Deferred[Any]:
        family = socket.AF_INET6 if self._address.version == 6 else socket.AF_INET
        try:
            self._socket = socket.socket(family, socket.SOCK_DGRAM)
            self._socket.setblocking(False)
            # A connected socket lets the kernel drop other sources and report ICMP port-unreachable.
            self._socket.connect((str(self._address), self._server[1]))
            self._socket.send(self._query.to_wire())
        except OSError as exc:  # e.g. no IPv6 on this host: that server is unusable, try the next
            self._finish(exc)
            return self.done
        self._reactor.addReader(self)
        self._timer = self._reactor.callLater(self._timeout, self._finish, _Timeout("timed out"))
        return self.done

    def fileno(self) -> int:
        return self._socket.fileno() if self._socket is not None else -1

    def logPrefix(self) -> str:
        return "DNS"

    def doRead(self) -> None:
        while not self._finished and self._socket is not None:
            try:
                data = self._socket.recv(65535)
            except BlockingIOError:
                return
            except ConnectionRefusedError:
                self.connectionRefused()
                return
            except OSError as exc:
                self._finish(exc)
                return
            self.datagramReceived(data, self._server)

    def connectionLost(self, reason: Any) -> None:
        self._finish(ConnectionError("socket closed"))

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if self._finished:
            return
        try:
            source = ipaddress.ip_address(addr[0].split("%")[0])
            source_ok = source == self._address and addr[1] == self._server[1]
        except ValueError:
            source_ok = False
        if not source_ok:
            log.debug("DNS answer from unexpected source {addr}", addr=addr)
            return
        try:
            response = dns.message.from_wire(data)
        except Exception:
            if _truncated_header(data, self._query.id):
                self._finish(_TRUNCATED)
            else:
                log.debug("unparsable DNS answer from {addr}", addr=addr)
            return
        if not self._query.is_response(response):
            log.debug("DNS answer from {addr} does not match the query", addr=addr)
            return  # keep waiting: a spoofed or late packet must not end the exchange
        self._finish(response)

    def connectionRefused(self) -> None:
        self._finish(ConnectionRefusedError("port unreachable"))

    def _finish(self, outcome: Any) -> None:
        if self._finished:
            return
        self._close()
        if not self.done.called:
            self.done.callback(outcome)

    def _close(self) -> None:
        self._finished = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self._socket is not None:
            self._reactor.removeReader(self)
            self._socket.close()
            self._socket = None

    def _cancel(self, _: defer.Deferred[Any]) -> None:
        if not self._finished:
            self._close()


class _Truncated(Exception):
    """The UDP answer had TC set (or was cut short): ask again over TCP."""


_TRUNCATED = _Truncated("truncated")


def _truncated_header(data: bytes, query_id: int) -> bool:
    """A TC answer may be cut mid-record; the header alone is enough to know we must retry over TCP."""
    if len(data) < 12:
        return False
    flags = int.from_bytes(data[2:4], "big")
    answer_bits = dns.flags.QR | dns.flags.TC
    return int.from_bytes(data[0:2], "big") == query_id and flags & answer_bits == answer_bits


class _TCPQuery(Int16StringReceiver):
    MAX_LENGTH = 65535

    def __init__(self, exchange: _TCPExchange) -> None:
        self.exchange = exchange

    def connectionMade(self) -> None:
        self.sendString(self.exchange.query.to_wire())

    def stringReceived(self, data: bytes) -> None:
        self.exchange.received(data)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.exchange.finish(reason.value if reason is not None else ConnectionError("closed"))


class _TCPExchange(ClientFactory):
    """The same query over TCP, after a truncated UDP answer; ``done`` fires once the socket is closed."""

    noisy = False

    def __init__(
        self, reactor: Any, query: dns.message.Message, server: tuple[str, int], timeout: float
    ) -> None:
        self.reactor = reactor
        self.query = query
        self.server = server
        self.timeout = timeout
        self.response: dns.message.Message | Exception | None = None
        self._protocol: _TCPQuery | None = None
        self._connector: Any = None
        self._timer: Any = None
        self.done: defer.Deferred[Any] = defer.Deferred(lambda _: self._expire())

    def start(self) -> defer.Deferred[Any]:
        self._timer = self.reactor.callLater(self.timeout, self._expire)
        self._connector = self.reactor.connectTCP(self.server[0], self.server[1], self, timeout=self.timeout)
        return self.done

    def buildProtocol(self, addr: Any) -> _TCPQuery:
        self._protocol = _TCPQuery(self)
        return self._protocol

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.finish(reason.value)

    def received(self, data: bytes) -> None:
        try:
            response = dns.message.from_wire(data)
        except Exception as exc:
            self.response = exc
            return
        self.response = response if self.query.is_response(response) else ConnectionError("mismatched answer")

    def _expire(self) -> None:
        if self.response is None:
            self.response = _Timeout("timed out over TCP")
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.abortConnection()
        elif self._connector is not None:
            self._connector.stopConnecting()

    def finish(self, reason: Exception) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if not self.done.called:
            self.done.callback(self.response if self.response is not None else reason)


# --- the resolver -----------------------------------------------------------------------------------------


class _Flight:
    """One network lookup and everyone waiting for it."""

    def __init__(self) -> None:
        self.waiters: list[defer.Deferred[_Answer]] = []
        self.work: defer.Deferred[_Answer] | None = None


class Resolver:
    """Stub resolver over the reactor, with a TTL cache and merging of identical in-flight queries."""

    cache_size = 10_000  # entries; the oldest go first when full

    def __init__(
        self,
        reactor: Any,
        nameservers: list[tuple[str, int]] | None = None,
        timeout: float = 5.0,
        attempts: int = 2,
        clock: Any = None,
        cache_answers: bool = True,
    ) -> None:
        if nameservers is not None and not nameservers:
            raise ValueError("no nameservers")
        if timeout <= 0 or attempts < 1:
            raise ValueError("timeout must be positive and attempts at least 1")
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self.nameservers = list(nameservers) if nameservers is not None else read_resolv_conf()
        self._timeout = timeout
        self._attempts = attempts
        # False for live checks (a sender domain's status): a fixed record shows at once, not after a TTL.
        self._cache_answers = cache_answers
        self._cache: dict[tuple[dns.name.Name, dns.rdatatype.RdataType], tuple[float, _Answer]] = {}
        self._inflight: dict[tuple[dns.name.Name, dns.rdatatype.RdataType], _Flight] = {}

    async def mx(self, domain: str) -> MXResult:
        """Where to deliver mail for ``domain``: MX hosts by preference, equal ones in random order.

        The shuffle happens on every call, cached or not, so equal hosts share the load (RFC 5321 §5.1).
        """
        name = _to_name(domain)
        answer = await self._lookup(name, dns.rdatatype.MX)
        if answer.nxdomain:
            raise NoSuchDomain(f"{_text(name)}: no such domain")
        if not answer.records:
            return MXResult([MXHost(0, _text(name))], implicit=True)
        hosts = [MXHost(r.preference, _text(r.exchange))
                 for r in answer.records if r.exchange != dns.name.root]
        if not hosts:
            # RFC 7505 says "0 ." alone; any set of only "." exchanges leaves nowhere to deliver either.
            raise NullMX(f"{_text(name)} does not accept mail (null MX)")
        random.shuffle(hosts)
        hosts.sort(key=lambda h: h.preference)  # stable: equal preferences keep their shuffled order
        return MXResult(hosts, implicit=False)

    async def addresses(self, host: str) -> list[str]:
        """IPv4 then IPv6 addresses of ``host``; an IP literal is returned as is, without a query.

        A and AAAA are asked in parallel. If one family fails temporarily but the other gives addresses,
        those are returned: delivery can proceed over the family that works instead of waiting.
        """
        try:
            ipaddress.ip_address(host)
            return [host]
        except ValueError:
            pass
        name = _to_name(host)
        outcomes = await defer.DeferredList(
            [self._lookup(name, dns.rdatatype.A), self._lookup(name, dns.rdatatype.AAAA)], consumeErrors=True)
        found = [r.address for ok, answer in outcomes if ok for r in answer.records]
        if found:
            return found
        if any(ok and answer.nxdomain for ok, answer in outcomes):
            raise NoSuchDomain(f"{_text(name)}: no such domain")
        for ok, failure in outcomes:
            if not ok:
                failure.raiseException()
        return []

    async def txt(self, name: str) -> list[str]:
        """The TXT records at ``name`` (after CNAMEs), one str per record: its strings joined, as SPF,
        DKIM and DMARC read them (RFC 7208 §3.3). No records: []; NXDOMAIN: NoSuchDomain."""
        dns_name = _to_name(name)
        answer = await self._lookup(dns_name, dns.rdatatype.TXT)
        if answer.nxdomain:
            raise NoSuchDomain(f"{_text(dns_name)}: no such domain")
        return [b"".join(r.strings).decode("utf-8", errors="replace") for r in answer.records]

    async def cname(self, name: str) -> str | None:
        """The target of the CNAME at ``name`` (one step, not followed), or None when it has none."""
        dns_name = _to_name(name)
        answer = await self._lookup(dns_name, dns.rdatatype.CNAME)
        if answer.nxdomain:
            raise NoSuchDomain(f"{_text(dns_name)}: no such domain")
        return _text(answer.records[0].target) if answer.records else None

    # Cache and in-flight merging. Both work on (name, type) so MX and A lookups share them.

    def _lookup(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> defer.Deferred[_Answer]:
        key = (name, rdtype)
        cached = self._cache.get(key)
        if cached is not None:
            if self._clock.seconds() < cached[0]:
                return defer.succeed(cached[1])
            del self._cache[key]
        flight = self._inflight.get(key)
        if flight is None:
            flight = self._inflight[key] = _Flight()
            flight.work = defer.ensureDeferred(self._fetch(name, rdtype))
            flight.work.addBoth(self._landed, key, flight)
        waiter: defer.Deferred[_Answer] = defer.Deferred(lambda d: self._leave(flight, d))
        flight.waiters.append(waiter)
        return waiter

    def _landed(self, result: _Answer | Failure, key: Any, flight: _Flight) -> None:
        if self._inflight.get(key) is flight:
            del self._inflight[key]
        waiters, flight.waiters = flight.waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    def _leave(self, flight: _Flight, waiter: defer.Deferred[_Answer]) -> None:
        """A caller gave up; stop the network work only when nobody else waits for it."""
        if waiter in flight.waiters:
            flight.waiters.remove(waiter)
        if not flight.waiters and flight.work is not None:
            flight.work.cancel()

    def _store(self, key: Any, answer: _Answer, ttl: float) -> None:
        if ttl <= 0 or not self._cache_answers:
            return
        self._cache.pop(key, None)
        while len(self._cache) >= self.cache_size:
            del self._cache[next(iter(self._cache))]
        self._cache[key] = (self._clock.seconds() + ttl, answer)

    async def _fetch(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> _Answer:
        response = await self._exchange(name, rdtype)
        try:
            chain = response.resolve_chaining()
        except (dns.message.ChainTooLong, dns.message.AnswerForNXDOMAIN, dns.exception.FormError) as exc:
            raise TemporaryDNSError(f"{_text(name)} {rdtype.name}: unusable answer ({exc!r})") from None
        if response.rcode() == dns.rcode.NXDOMAIN:
            answer = _Answer(nxdomain=True, records=())
        else:
            answer = _Answer(nxdomain=False, records=tuple(chain.answer) if chain.answer is not None else ())
        if chain.answer is not None:
            ttl = min(chain.minimum_ttl, MAX_POSITIVE_TTL)
        elif any(rrset.rdtype == dns.rdatatype.SOA and chain.canonical_name.is_subdomain(rrset.name)
                 for rrset in response.authority):
            ttl = min(chain.minimum_ttl, MAX_NEGATIVE_TTL)  # RFC 2308: min(SOA TTL, SOA minimum, CNAME TTLs)
        else:
            ttl = min([DEFAULT_NEGATIVE_TTL, *(c.ttl for c in chain.cnames)])
        self._store((name, rdtype), answer, ttl)
        return answer

    async def _exchange(
        self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType
    ) -> dns.message.QueryMessage:
        """Ask each server in turn, for ``attempts`` rounds; only NOERROR and NXDOMAIN are answers.

        A server that answers SERVFAIL/REFUSED is not asked again for this lookup: it would most likely
        say the same, and the caller will retry the whole lookup later anyway.
        """
        problems: list[str] = []
        servers = list(self.nameservers)
        for _ in range(self._attempts):
            retry = []
            for server in servers:
                # A fresh message (new random id) for every attempt; dnspython uses a CSPRNG for the id.
                query = dns.message.make_query(name, rdtype, use_edns=0, payload=EDNS_PAYLOAD)
                outcome = await _UDPExchange(self._reactor, query, server, self._timeout).start()
                if outcome is _TRUNCATED or (
                        isinstance(outcome, dns.message.Message) and outcome.flags & dns.flags.TC):
                    outcome = await _TCPExchange(self._reactor, query, server, self._timeout).start()
                if isinstance(outcome, dns.message.QueryMessage):
                    rcode = outcome.rcode()
                    if rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                        return outcome
                    problems.append(f"{_describe(server)}: {dns.rcode.to_text(rcode)}")
                else:
                    problems.append(f"{_describe(server)}: {outcome}")
                    retry.append(server)
            servers = retry
            if not servers:
                break
        raise TemporaryDNSError(f"{_text(name)} {rdtype.name}: " + "; ".join(problems))
