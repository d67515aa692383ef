"""A dict-backed DNS server on 127.0.0.1 (UDP and TCP, one port) in the test's reactor.

Built on twisted.names (libraries.md §5) so it needs no threads and no extra dependency. It follows CNAME
chains inside its own data, as a recursive resolver would, so the client sees complete chains.
"""

from __future__ import annotations

from typing import Any

from dns import message as dnspython_message
from dns import query as dnspython_query
from twisted.internet import defer, threads
from twisted.internet.error import CannotListenError
from twisted.names import dns, server
from twisted.python.failure import Failure


class _ServFail(Exception):
    """Raised by the authority for names marked servfail; answered as SERVFAIL without logging an error."""


class _Authority:
    """IResolver-enough for DNSServerFactory: answers from TestDNSServer's dicts."""

    def __init__(self, owner: TestDNSServer) -> None:
        self.owner = owner

    def query(self, query: dns.Query, timeout: Any = None) -> defer.Deferred[Any]:
        owner = self.owner
        name = _key(query.name.name)
        answers: list[dns.RRHeader] = []
        seen: set[str] = set()
        while True:
            if name in owner._servfail:
                return defer.fail(_ServFail(name))
            upstream = owner._upstream(name)
            if upstream is not None:
                return _forward(upstream, name, query.type).addCallback(
                    lambda found, before=answers: (before + found[0], found[1], found[2]))
            node = owner._records.get(name)
            if node is None:
                # Simplification: a chain ending in a missing name answers NXDOMAIN without the CNAMEs.
                return defer.fail(dns.DomainError(name))
            if query.type in node:
                return defer.succeed((answers + node[query.type], [], []))
            if dns.CNAME in node and query.type != dns.CNAME and name not in seen:
                seen.add(name)
                answers += node[dns.CNAME]
                name = _key(node[dns.CNAME][0].payload.name.name)
                continue
            soa = dns.Record_SOA(mname="ns.test", rname="hostmaster.test", serial=1,
                                 minimum=owner.soa_ttl, ttl=owner.soa_ttl)
            return defer.succeed((answers, [dns.RRHeader(name, dns.SOA, ttl=owner.soa_ttl, payload=soa,
                                                         auth=True)], []))


def _forward(upstream: tuple[str, int], name: str, qtype: int) -> defer.Deferred[Any]:
    """Ask ``upstream`` (dnspython in a thread, UDP then TCP if truncated) and hand its sections on."""
    def ask() -> bytes:
        query = dnspython_message.make_query(name, qtype)
        response, _ = dnspython_query.udp_with_fallback(query, upstream[0], timeout=5, port=upstream[1])
        return response.to_wire()

    def sections(wire: bytes) -> Any:
        message = dns.Message()
        message.fromStr(wire)
        if message.rCode == dns.ENAME:
            raise dns.DomainError(name)
        if message.rCode != dns.OK:
            raise _ServFail(name)
        return message.answers, message.authority, []

    return threads.deferToThread(ask).addCallback(sections)


class _Factory(server.DNSServerFactory):
    def __init__(self, owner: TestDNSServer) -> None:
        super().__init__(authorities=[_Authority(owner)])
        self.owner = owner
        self.closed: list[defer.Deferred[None]] = []

    def handleQuery(self, message: dns.Message, protocol: Any, address: Any) -> Any:
        query = message.queries[0]
        entry = (_key(query.name.name), dns.QUERY_TYPES.get(query.type, str(query.type)))
        self.owner.queries.append(entry)
        if address is None:
            self.owner.tcp_queries.append(entry)
        return super().handleQuery(message, protocol, address)

    def gotResolverError(self, failure: Failure, protocol: Any, message: dns.Message, address: Any) -> None:
        if failure.check(_ServFail):
            self.sendReply(protocol, self._responseFromMessage(message=message, rCode=dns.ESERVER), address)
        else:
            super().gotResolverError(failure, protocol, message, address)

    def sendReply(self, protocol: Any, message: dns.Message, address: Any) -> None:
        names = [_key(q.name.name) for q in message.queries]
        if address is not None and names and names[0] in self.owner._truncate:
            message.trunc = True
            message.answers, message.authority, message.additional = [], [], []
        super().sendReply(protocol, message, address)

    def connectionLost(self, protocol: Any) -> None:
        super().connectionLost(protocol)
        if not self.connections:
            waiting, self.closed = self.closed, []
            for d in waiting:
                d.callback(None)


def _key(name: bytes | str) -> str:
    text = name.decode("ascii") if isinstance(name, bytes) else name
    return text.rstrip(".").lower()


class TestDNSServer:
    """Serves MX/A/AAAA/CNAME/TXT from dicts; unknown names are NXDOMAIN, known names without the type
    NODATA; zones given to ``forward`` are asked of another server."""

    __test__ = False  # not a test case, despite the name

    def __init__(self, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.port = 0
        self.soa_ttl = 60
        self.queries: list[tuple[str, str]] = []
        self.tcp_queries: list[tuple[str, str]] = []
        self._records: dict[str, dict[int, list[dns.RRHeader]]] = {}
        self._servfail: set[str] = set()
        self._truncate: set[str] = set()
        self._forwards: dict[str, tuple[str, int]] = {}
        self._factory = _Factory(self)
        self._udp: Any = None
        self._tcp: Any = None

    async def start(self) -> TestDNSServer:
        for _ in range(20):
            protocol = dns.DNSDatagramProtocol(self._factory)
            self._udp = self.reactor.listenUDP(0, protocol, interface="127.0.0.1")
            self.port = self._udp.getHost().port
            try:
                self._tcp = self.reactor.listenTCP(self.port, self._factory, interface="127.0.0.1")
                return self
            except CannotListenError:
                await self._udp.stopListening()
        raise RuntimeError("no port free for both UDP and TCP")

    async def stop(self) -> None:
        await self._tcp.stopListening()
        await self._udp.stopListening()
        if self._factory.connections:
            closed: defer.Deferred[None] = defer.Deferred()
            self._factory.closed.append(closed)
            for protocol in list(self._factory.connections):
                protocol.transport.loseConnection()
            await closed

    @property
    def nameservers(self) -> list[str]:
        return [f"127.0.0.1:{self.port}"]

    def _add(self, name: str, rtype: int, payloads: list[Any], ttl: int) -> None:
        rrs = [dns.RRHeader(name, rtype, ttl=ttl, payload=p, auth=True) for p in payloads]
        self._records.setdefault(_key(name), {}).setdefault(rtype, []).extend(rrs)

    def mx(self, domain: str, *records: tuple[int, str], ttl: int = 300) -> None:
        self._add(domain, dns.MX, [dns.Record_MX(pref, host, ttl=ttl) for pref, host in records], ttl)

    def mail_host(self, domain: str, host: str, ip: str) -> None:
        """The common case: ``domain`` has one MX, ``host``, at ``ip``."""
        self.mx(domain, (10, host))
        self.a(host, ip)

    def null_mx(self, domain: str, ttl: int = 300) -> None:
        self._add(domain, dns.MX, [dns.Record_MX(0, b"", ttl=ttl)], ttl)

    def a(self, host: str, *ips: str, ttl: int = 300) -> None:
        self._add(host, dns.A, [dns.Record_A(ip, ttl=ttl) for ip in ips], ttl)

    def aaaa(self, host: str, *ips: str, ttl: int = 300) -> None:
        self._add(host, dns.AAAA, [dns.Record_AAAA(ip, ttl=ttl) for ip in ips], ttl)

    def cname(self, name: str, target: str, ttl: int = 300) -> None:
        self._records.setdefault(_key(name), {})[dns.CNAME] = [
            dns.RRHeader(name, dns.CNAME, ttl=ttl, payload=dns.Record_CNAME(target, ttl=ttl), auth=True)]

    def txt(self, name: str, *values: str, ttl: int = 300) -> None:
        """TXT records at ``name``; a value over 255 octets is split into strings as a zone file would."""
        def strings(value: str) -> list[bytes]:
            data = value.encode()
            return [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]
        self._add(name, dns.TXT, [dns.Record_TXT(*strings(v), ttl=ttl) for v in values], ttl)

    def remove(self, name: str, rtype: int | None = None) -> None:
        """Records at ``name`` (of one type, or all) are gone."""
        node = self._records.get(_key(name), {})
        for key in [rtype] if rtype is not None else list(node):
            node.pop(key, None)

    def forward(self, zone: str, server: str) -> None:
        """Names in ``zone`` are asked of ``server`` ("IP:port"), as a recursive resolver would follow a
        delegation; CNAME chains from our own data into the zone are completed from there."""
        host, _, port = server.rpartition(":")
        self._forwards[_key(zone)] = (host.strip("[]"), int(port))

    def _upstream(self, name: str) -> tuple[str, int] | None:
        for zone, upstream in self._forwards.items():
            if name == zone or name.endswith("." + zone):
                return upstream
        return None

    def servfail(self, name: str) -> None:
        self._servfail.add(_key(name))

    def truncate(self, name: str) -> None:
        self._truncate.add(_key(name))

    def clear(self) -> None:
        self._records.clear()
        self._servfail.clear()
        self._truncate.clear()
        self._forwards.clear()
        self.queries.clear()
        self.tcp_queries.clear()
