"""The MX resolver against a real DNS server in the test's reactor (tests/support/dns_server.py)."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rrset
from twisted.internet import defer, reactor, tcp, udp
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.trial import unittest

from smtpeter import dns as dns_module
from smtpeter.dns import (
    MXHost,
    MXResult,
    NoSuchDomain,
    NullMX,
    Resolver,
    TemporaryDNSError,
    parse_nameserver,
    read_resolv_conf,
)
from tests.support.dns_server import TestDNSServer


class _Silent(DatagramProtocol):
    """Receives queries and never answers."""

    def __init__(self) -> None:
        self.received = 0

    def datagramReceived(self, data: bytes, addr: object) -> None:
        self.received += 1


class _Scripted(DatagramProtocol):
    """Answers each query with whatever ``reply(query)`` returns: a list of wire messages."""

    def __init__(self, reply: Callable[[dns.message.Message], list[bytes]]) -> None:
        self.reply = reply

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        for wire in self.reply(dns.message.from_wire(data)):
            self.transport.write(wire, addr)


def mx_answer(query: dns.message.Message, host: str, **changes: Any) -> bytes:
    response = dns.message.make_response(query)
    response.answer.append(dns.rrset.from_text(query.question[0].name, 300, "IN", "MX", f"10 {host}."))
    for name, value in changes.items():
        setattr(response, name, value)
    return response.to_wire()


class ResolverTestCase(unittest.TestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        self.server = await TestDNSServer(reactor).start()
        self.addCleanup(self.server.stop)
        self.clock = Clock()
        self.resolver = self.make_resolver()

    def make_resolver(self, **kwargs: object) -> Resolver:
        nameservers = [parse_nameserver(text) for text in self.server.nameservers]
        return Resolver(reactor, nameservers=nameservers, timeout=2.0, clock=self.clock, **kwargs)  # type: ignore[arg-type]

    def scripted_port(self, reply: Callable[[dns.message.Message], list[bytes]],
                      interface: str = "127.0.0.1") -> tuple[str, int]:
        port = reactor.listenUDP(0, _Scripted(reply), interface=interface)
        self.addCleanup(port.stopListening)
        return interface, port.getHost().port

    async def silent_port(self) -> tuple[str, int]:
        silent = _Silent()
        port = reactor.listenUDP(0, silent, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.silent = silent
        return "127.0.0.1", port.getHost().port


class MXTests(ResolverTestCase):
    async def test_sorted_by_preference(self) -> None:
        self.server.mx("example.test", (30, "MX3.example.test"), (10, "mx1.example.test"),
                       (20, "mx2.example.test"))
        result = await self.resolver.mx("example.test")
        self.assertEqual(result, MXResult([MXHost(10, "mx1.example.test"), MXHost(20, "mx2.example.test"),
                                           MXHost(30, "mx3.example.test")], implicit=False))

    async def test_equal_preferences_are_shuffled_even_from_cache(self) -> None:
        self.server.mx("eq.test", (10, "a.eq.test"), (10, "b.eq.test"), (5, "first.eq.test"),
                       (20, "c.eq.test"))
        orders = set()
        for _ in range(60):
            hosts = [h.host for h in (await self.resolver.mx("eq.test")).hosts]
            self.assertEqual((hosts[0], hosts[-1]), ("first.eq.test", "c.eq.test"))
            orders.add(tuple(hosts[1:3]))
        self.assertEqual(orders, {("a.eq.test", "b.eq.test"), ("b.eq.test", "a.eq.test")})
        self.assertEqual(len(self.server.queries), 1)

    async def test_implicit_mx_when_the_name_has_no_mx(self) -> None:
        self.server.a("plain.test", "192.0.2.1")
        result = await self.resolver.mx("Plain.TEST.")
        self.assertEqual(result, MXResult([MXHost(0, "plain.test")], implicit=True))

    async def test_null_mx(self) -> None:
        self.server.null_mx("nomail.test")
        with self.assertRaises(NullMX) as caught:
            await self.resolver.mx("nomail.test")
        self.assertFalse(caught.exception.temporary)

    async def test_nxdomain(self) -> None:
        with self.assertRaises(NoSuchDomain) as caught:
            await self.resolver.mx("missing.test")
        self.assertFalse(caught.exception.temporary)

    async def test_invalid_names_are_permanent(self) -> None:
        for bad in ("", ".", "a..b.test", "x" * 64 + ".test", " spaced.test"):
            with self.assertRaises(NoSuchDomain):
                await self.resolver.mx(bad)
        self.assertEqual(self.server.queries, [])

    async def test_servfail_is_temporary_and_not_cached(self) -> None:
        self.server.servfail("broken.test")
        with self.assertRaises(TemporaryDNSError) as caught:
            await self.resolver.mx("broken.test")
        self.assertTrue(caught.exception.temporary)
        self.assertIn("SERVFAIL", str(caught.exception))
        self.server.clear()
        self.server.mx("broken.test", (10, "mx.broken.test"))
        self.assertEqual((await self.resolver.mx("broken.test")).hosts, [MXHost(10, "mx.broken.test")])
        self.assertEqual(self.server.queries, [("broken.test", "MX")])

    async def test_timeout_is_temporary(self) -> None:
        silent = await self.silent_port()
        resolver = Resolver(reactor, nameservers=[silent], timeout=0.2, attempts=2, clock=self.clock)
        started = time.monotonic()
        with self.assertRaises(TemporaryDNSError) as caught:
            await resolver.mx("example.test")
        self.assertGreaterEqual(time.monotonic() - started, 0.35)
        self.assertEqual(self.silent.received, 2)
        self.assertIn("timed out", str(caught.exception))

    async def test_next_nameserver_after_a_timeout(self) -> None:
        silent = await self.silent_port()
        self.server.mx("example.test", (10, "mx.example.test"))
        resolver = Resolver(reactor, nameservers=[silent, parse_nameserver(self.server.nameservers[0])],
                            timeout=0.2, clock=self.clock)
        self.assertEqual((await resolver.mx("example.test")).hosts, [MXHost(10, "mx.example.test")])
        self.assertEqual(self.silent.received, 1)

    async def test_truncated_answer_retried_over_tcp(self) -> None:
        self.server.mx("big.test", *((10, f"mx{i}.big.test") for i in range(5)))
        self.server.truncate("big.test")
        result = await self.resolver.mx("big.test")
        self.assertEqual(len(result.hosts), 5)
        self.assertEqual(self.server.queries, [("big.test", "MX")] * 2)
        self.assertEqual(self.server.tcp_queries, [("big.test", "MX")])

    async def test_answers_with_wrong_id_or_question_are_ignored(self) -> None:
        def reply(query: dns.message.Message) -> list[bytes]:
            other = dns.message.make_query("other.test", "MX")
            return [mx_answer(query, "spoofed.test", id=(query.id + 1) % 65536),
                    mx_answer(other, "spoofed.test", id=query.id),
                    mx_answer(query, "mx.example.test")]

        resolver = Resolver(reactor, nameservers=[self.scripted_port(reply)], timeout=2.0, clock=self.clock)
        self.assertEqual((await resolver.mx("example.test")).hosts, [MXHost(10, "mx.example.test")])

    async def test_truncated_answer_without_tcp_is_temporary(self) -> None:
        def reply(query: dns.message.Message) -> list[bytes]:
            return [mx_answer(query, "mx.example.test", flags=query.flags | dns.flags.QR | dns.flags.TC)]

        resolver = Resolver(reactor, nameservers=[self.scripted_port(reply)], timeout=1.0, clock=self.clock)
        with self.assertRaises(TemporaryDNSError):  # nothing listens on TCP there: connection refused
            await resolver.mx("example.test")

    async def test_ipv6_nameserver(self) -> None:
        try:
            server = self.scripted_port(lambda query: [mx_answer(query, "mx.example.test")], interface="::1")
        except CannotListenError:
            raise unittest.SkipTest("no IPv6 loopback") from None
        resolver = Resolver(reactor, nameservers=[parse_nameserver(f"[::1]:{server[1]}")], timeout=2.0)
        self.assertEqual((await resolver.mx("example.test")).hosts, [MXHost(10, "mx.example.test")])

    async def test_cname_chain(self) -> None:
        self.server.cname("alias.test", "alias2.test")
        self.server.cname("alias2.test", "real.test")
        self.server.mx("real.test", (10, "mx.real.test"))
        self.assertEqual((await self.resolver.mx("alias.test")).hosts, [MXHost(10, "mx.real.test")])
        self.assertEqual(self.server.queries, [("alias.test", "MX")])

    async def test_idna_domain_queried_as_a_label(self) -> None:
        self.server.mx("xn--bcher-kva.test", (10, "mx.xn--bcher-kva.test"))
        for spelling in ("bücher.test", "BÜCHER.test"):
            self.assertEqual((await self.resolver.mx(spelling)).hosts, [MXHost(10, "mx.xn--bcher-kva.test")])
        self.assertEqual(self.server.queries, [("xn--bcher-kva.test", "MX")])


class AddressTests(ResolverTestCase):
    async def test_ipv4_before_ipv6(self) -> None:
        self.server.aaaa("host.test", "2001:db8::1")
        self.server.a("host.test", "192.0.2.1", "192.0.2.2")
        found = await self.resolver.addresses("host.test")
        self.assertEqual(sorted(found[:2]), ["192.0.2.1", "192.0.2.2"])
        self.assertEqual(found[2:], ["2001:db8::1"])

    async def test_only_one_family_and_cname(self) -> None:
        self.server.aaaa("v6.test", "2001:db8::2")
        self.server.cname("www.v6.test", "v6.test")
        self.assertEqual(await self.resolver.addresses("www.v6.test"), ["2001:db8::2"])

    async def test_name_without_addresses(self) -> None:
        self.server.mx("mailonly.test", (10, "mx.mailonly.test"))
        self.assertEqual(await self.resolver.addresses("mailonly.test"), [])

    async def test_nxdomain(self) -> None:
        with self.assertRaises(NoSuchDomain):
            await self.resolver.addresses("missing.test")

    async def test_servfail(self) -> None:
        self.server.servfail("broken.test")
        with self.assertRaises(TemporaryDNSError):
            await self.resolver.addresses("broken.test")

    async def test_ip_literals_need_no_query(self) -> None:
        self.assertEqual(await self.resolver.addresses("192.0.2.9"), ["192.0.2.9"])
        self.assertEqual(await self.resolver.addresses("2001:db8::9"), ["2001:db8::9"])
        self.assertEqual(self.server.queries, [])


class CacheTests(ResolverTestCase):
    async def test_positive_answers_live_for_their_ttl(self) -> None:
        self.server.mx("example.test", (10, "mx.example.test"), ttl=300)
        await self.resolver.mx("example.test")
        self.clock.advance(299)
        await self.resolver.mx("example.test")
        self.assertEqual(len(self.server.queries), 1)
        self.clock.advance(2)
        await self.resolver.mx("example.test")
        self.assertEqual(len(self.server.queries), 2)

    async def test_ttl_is_the_minimum_of_the_chain(self) -> None:
        self.server.cname("alias.test", "real.test", ttl=30)
        self.server.mx("real.test", (10, "mx.real.test"), ttl=300)
        await self.resolver.mx("alias.test")
        self.clock.advance(29)
        await self.resolver.mx("alias.test")
        self.assertEqual(len(self.server.queries), 1)
        self.clock.advance(2)
        await self.resolver.mx("alias.test")
        self.assertEqual(len(self.server.queries), 2)

    async def test_nodata_cached_for_the_soa_ttl(self) -> None:
        self.server.soa_ttl = 600
        self.server.a("plain.test", "192.0.2.1")
        await self.resolver.mx("plain.test")
        self.clock.advance(599)
        self.assertTrue((await self.resolver.mx("plain.test")).implicit)
        self.assertEqual(len(self.server.queries), 1)
        self.clock.advance(2)
        await self.resolver.mx("plain.test")
        self.assertEqual(len(self.server.queries), 2)

    async def test_negative_ttl_capped(self) -> None:
        self.server.soa_ttl = 7200
        self.server.a("plain.test", "192.0.2.1")
        await self.resolver.mx("plain.test")
        self.clock.advance(3601)
        await self.resolver.mx("plain.test")
        self.assertEqual(len(self.server.queries), 2)

    async def test_nxdomain_without_soa_cached_for_60_seconds(self) -> None:
        for _ in range(2):
            with self.assertRaises(NoSuchDomain):
                await self.resolver.mx("missing.test")
        self.assertEqual(len(self.server.queries), 1)
        self.clock.advance(61)
        with self.assertRaises(NoSuchDomain):
            await self.resolver.mx("missing.test")
        self.assertEqual(len(self.server.queries), 2)

    async def test_identical_queries_in_flight_share_one_query(self) -> None:
        self.server.mx("example.test", (10, "mx.example.test"))
        self.server.a("other.test", "192.0.2.1")
        lookups = [defer.ensureDeferred(self.resolver.mx("example.test")) for _ in range(5)]
        lookups.append(defer.ensureDeferred(self.resolver.mx("other.test")))
        results = await defer.gatherResults(lookups)
        self.assertEqual({r.hosts[0].host for r in results}, {"mx.example.test", "other.test"})
        self.assertEqual(sorted(self.server.queries), [("example.test", "MX"), ("other.test", "MX")])

    async def test_identical_failures_in_flight_reach_every_caller(self) -> None:
        self.server.servfail("broken.test")
        lookups = [defer.ensureDeferred(self.resolver.mx("broken.test")) for _ in range(3)]
        for lookup in lookups:
            with self.assertRaises(TemporaryDNSError):
                await lookup
        self.assertEqual(len(self.server.queries), 1)


def sockets() -> set[object]:
    """Open UDP ports and TCP connections (not the reactor's own wakers)."""
    return {r for r in reactor.getReaders() if isinstance(r, udp.Port | tcp.Connection)}


def timers() -> set[object]:
    """Pending DelayedCalls except trial's own test timeout."""
    return {c for c in reactor.getDelayedCalls() if c.active() and "onTimeout" not in repr(c)}


class CleanupTests(ResolverTestCase):
    async def test_no_sockets_or_timers_left_behind(self) -> None:
        readers = sockets()
        before = timers()
        self.server.mx("example.test", (10, "mx.example.test"))
        await self.resolver.mx("example.test")
        with self.assertRaises(NoSuchDomain):
            await self.resolver.addresses("missing.test")
        silent = await self.silent_port()
        readers = sockets()
        with self.assertRaises(TemporaryDNSError):
            await Resolver(reactor, nameservers=[silent], timeout=0.1, attempts=1).mx("example.test")
        self.assertEqual(sockets(), readers)
        self.assertEqual(timers(), before)

    async def test_cancelled_lookup_closes_its_socket(self) -> None:
        silent = await self.silent_port()
        readers = sockets()
        resolver = Resolver(reactor, nameservers=[silent], timeout=5.0)
        lookup = defer.ensureDeferred(resolver.mx("example.test"))
        await deferLater(0.05)
        self.assertEqual(self.silent.received, 1)
        lookup.cancel()
        with self.assertRaises(defer.CancelledError):
            await lookup
        await deferLater(0)
        self.assertEqual(sockets(), readers)
        self.assertFalse(resolver._inflight)


def deferLater(seconds: float) -> defer.Deferred[None]:
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)


class ConfigurationTests(unittest.TestCase):
    def temp_file(self, text: str) -> Path:
        directory = Path(tempfile.mkdtemp(prefix="smtpeter-test-"))
        self.addCleanup(shutil.rmtree, directory, True)
        path = directory / "resolv.conf"
        path.write_text(text)
        return path

    def test_parse_nameserver(self) -> None:
        self.assertEqual(parse_nameserver("127.0.0.1:5353"), ("127.0.0.1", 5353))
        self.assertEqual(parse_nameserver("127.0.0.1"), ("127.0.0.1", 53))
        self.assertEqual(parse_nameserver("[::1]:5300"), ("::1", 5300))
        self.assertEqual(parse_nameserver("[::1]"), ("::1", 53))
        self.assertEqual(parse_nameserver("2001:db8::53"), ("2001:db8::53", 53))
        for bad in ("example.test", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:70000", "[::1:53", "[::1]x53",
                    "1.2.3.4:+53", ""):
            with self.assertRaises(ValueError):
                parse_nameserver(bad)

    def test_resolv_conf(self) -> None:
        path = self.temp_file("# comment\nsearch example.test\nnameserver 192.0.2.53\nnameserver ::1\n"
                              "nameserver bogus\n")
        self.assertEqual(read_resolv_conf(str(path)), [("192.0.2.53", 53), ("::1", 53)])
        self.assertEqual(read_resolv_conf(str(path) + ".missing"), [("127.0.0.1", 53)])

    def test_defaults_come_from_resolv_conf(self) -> None:
        path = self.temp_file("nameserver 192.0.2.53\n")
        self.patch(dns_module, "RESOLV_CONF", str(path))
        self.assertEqual(Resolver(reactor).nameservers, [("192.0.2.53", 53)])
        with self.assertRaises(ValueError):
            Resolver(reactor, nameservers=[])
