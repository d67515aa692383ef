"""Sender domains' DNS: the records we hand out, the live status check (against the test DNS server over
real sockets, SPF through pyspf), and our hosted zone's authoritative server."""

from __future__ import annotations

import datetime
from dataclasses import replace
from typing import Any

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
from twisted.internet import reactor, threads
from twisted.internet.task import Clock
from twisted.trial import unittest

from smtpeter.dns import NoSuchDomain, Resolver, parse_nameserver
from smtpeter.domains import records, status
from smtpeter.domains.hosted_dns import HostedDNS, parse_listen
from smtpeter.domains.model import (
    ACTIVE,
    ERROR,
    NEXT,
    OK,
    RETIRED,
    STATUS_ITEMS,
    DkimKey,
    DmarcPolicy,
    DomainSettings,
)
from smtpeter.domains.records import Operator
from smtpeter.outbound.dkim import dns_record, new_key
from tests.support.dns_server import TestDNSServer

ZONE = "hosted.smtpeter.test"
OPERATOR = Operator(hosted_zone=ZONE, sending_addresses=("127.0.0.1", "::1"), mx_host="mx.smtpeter.test",
                    dmarc_address="dmarc@smtpeter.test", tracking_target="track.smtpeter.test")
TODAY = datetime.date(2025, 3, 10)
TOKEN = "Abcdefghijklmnopqrstuvwxyz012345"


def make_settings(**changes: Any) -> DomainSettings:
    settings = DomainSettings(domain="example.test", account_id="acc1", approved=True,
                              validation_token=TOKEN, created=0.0, bounces="bounces.example.test",
                              tracking="clicks.example.test", https=False)
    return replace(settings, **changes)


def make_key(selector: str, algorithm: str, state: str, domain: str = "example.test",
             managed: bool = True) -> DkimKey:
    private = new_key(algorithm)
    return DkimKey(domain=domain, selector=selector, algorithm=algorithm, private_key=private,
                   public_record=dns_record(algorithm, private), managed=managed, state=state,
                   always=False, created=0.0)


# Made once: RSA key generation costs a little.
KEYS = [make_key("zero", "rsa", ACTIVE), make_key("one", "rsa", NEXT), make_key("zero-ed", "ed25519", ACTIVE)]
OTHER_RSA = make_key("zero", "rsa", ACTIVE)


def spf_value() -> str:
    return "v=spf1 ip4:127.0.0.1 ip6:::1 -all"


class RecordsTests(unittest.TestCase):
    def test_ownership_record(self) -> None:
        self.assertEqual(records.ownership_record(make_settings()),
                         {"name": "smtpeter-abcdefghijkl.example.test", "type": "TXT", "value": TOKEN})

    def test_selfhosted(self) -> None:
        settings = make_settings(approved=False, spf_mechanisms=("ip4:192.0.2.0/24",),
                                 dmarc=DmarcPolicy(policy="reject", percentage=50))
        found = records.selfhosted(settings, [KEYS[2], KEYS[1], KEYS[0]], OPERATOR, TODAY)
        spf = "v=spf1 ip4:127.0.0.1 ip6:::1 ip4:192.0.2.0/24 -all"
        self.assertEqual(found, [
            records.ownership_record(settings),
            {"name": "zero._domainkey.example.test", "type": "TXT", "value": KEYS[0].public_record},
            {"name": "zero-ed._domainkey.example.test", "type": "TXT", "value": KEYS[2].public_record},
            {"name": "one._domainkey.example.test", "type": "TXT", "value": KEYS[1].public_record},
            {"name": "bounces.example.test", "type": "TXT", "value": spf},
            {"name": "example.test", "type": "TXT", "value": spf},
            {"name": "_dmarc.example.test", "type": "TXT",
             "value": "v=DMARC1; p=reject; pct=50; rua=mailto:dmarc@smtpeter.test; adkim=r; aspf=r"},
            {"name": "bounces.example.test", "type": "MX", "value": "10 mx.smtpeter.test"},
            {"name": "clicks.example.test", "type": "CNAME", "value": "track.smtpeter.test"},
        ])

    def test_recommended(self) -> None:
        found = records.recommended(make_settings(), KEYS, OPERATOR, TODAY)
        selectors = ["zero", "one", "two", "zero-ed", "one-ed", "two-ed"]
        self.assertEqual(found, [
            *({"name": f"{s}._domainkey.example.test", "type": "CNAME",
               "value": f"{s}._domainkey.example.test.{ZONE}"} for s in selectors),
            {"name": "bounces.example.test", "type": "TXT",
             "value": f"v=spf1 include:_spf.example.test.{ZONE} -all"},
            {"name": "example.test", "type": "TXT", "value": f"v=spf1 include:_spf.example.test.{ZONE} -all"},
            {"name": "_dmarc.example.test", "type": "CNAME", "value": f"_dmarc.example.test.{ZONE}"},
            {"name": "bounces.example.test", "type": "MX", "value": "10 mx.smtpeter.test"},
            {"name": "clicks.example.test", "type": "CNAME", "value": "track.smtpeter.test"},
        ])
        for record in found:
            if record["type"] == "CNAME" and record["value"].endswith(ZONE):
                self.assertIsNotNone(records.parse_hosted_name(record["value"], ZONE))

    def test_recommended_ownership_first_and_customer_keys(self) -> None:
        custom = make_key("mine", "rsa", ACTIVE, managed=False)
        found = records.recommended(make_settings(approved=False), [custom, KEYS[0]], OPERATOR, TODAY)
        self.assertEqual(found[0], records.ownership_record(make_settings()))
        self.assertEqual([r["name"].split(".")[0] for r in found if "_domainkey" in r["name"]],
                         ["zero", "one", "two", "mine"])

    def test_recommended_without_hosted_zone_is_selfhosted(self) -> None:
        operator = replace(OPERATOR, hosted_zone="")
        self.assertEqual(records.recommended(make_settings(), KEYS, operator, TODAY),
                         records.selfhosted(make_settings(), KEYS, operator, TODAY))

    def test_bounce_domain_equal_to_domain_gets_one_spf_record(self) -> None:
        found = records.selfhosted(make_settings(bounces="example.test"), [], OPERATOR, TODAY)
        self.assertEqual([r["name"] for r in found if r["type"] == "TXT"],
                         ["example.test", "_dmarc.example.test"])

    def test_tracking_target_address(self) -> None:
        for target, rtype in (("192.0.2.7", "A"), ("[2001:db8::7]", "AAAA")):
            operator = replace(OPERATOR, tracking_target=target)
            self.assertEqual(records.selfhosted(make_settings(), [], operator, TODAY)[-1],
                             {"name": "clicks.example.test", "type": rtype, "value": target.strip("[]")})

    def test_address_mechanisms(self) -> None:
        found = records.address_mechanisms(["192.0.2.1", "192.0.2.9/24", "2001:db8::1", "2001:db8::/64"])
        self.assertEqual(found, ["ip4:192.0.2.1", "ip4:192.0.2.0/24", "ip6:2001:db8::1", "ip6:2001:db8::/64"])

    def test_dmarc_ramp(self) -> None:
        policy = DmarcPolicy(policy="quarantine", percentage=50, start=datetime.date(2025, 3, 1),
                             end=datetime.date(2025, 3, 11))
        days = {datetime.date(2025, 2, 28): ("none", 100), datetime.date(2025, 3, 1): ("quarantine", 0),
                datetime.date(2025, 3, 4): ("quarantine", 15), datetime.date(2025, 3, 10): ("quarantine", 45),
                datetime.date(2025, 3, 11): ("quarantine", 50), datetime.date(2026, 1, 1): ("quarantine", 50)}
        for day, expected in days.items():
            self.assertEqual(records.dmarc_ramp(policy, day), expected, day)
        fixed = DmarcPolicy(policy="reject", percentage=20)
        self.assertEqual(records.dmarc_ramp(fixed, TODAY), ("reject", 20))
        self.assertEqual(records.dmarc_ramp(replace(policy, end=None), TODAY), ("quarantine", 50))
        self.assertEqual(records.dmarc_ramp(replace(policy, policy="none"), TODAY), ("none", 50))

    def test_dmarc_record_addresses(self) -> None:
        policy = DmarcPolicy(addresses=("DMARC@smtpeter.test", "a,b!c@example.test", "r@example.test"))
        self.assertEqual(records.dmarc_record(policy, TODAY, OPERATOR),
                         "v=DMARC1; p=none; pct=100; rua=mailto:dmarc@smtpeter.test,"
                         "mailto:a%2Cb%21c@example.test,mailto:r@example.test; adkim=r; aspf=r")

    def test_parse_hosted_name(self) -> None:
        self.assertEqual(records.parse_hosted_name(f"One._DomainKey.Example.test.{ZONE}.", ZONE),
                         ("dkim", "example.test", "one"))
        self.assertEqual(records.parse_hosted_name(f"_spf.a.b.example.test.{ZONE}", ZONE),
                         ("spf", "a.b.example.test", None))
        self.assertEqual(records.parse_hosted_name(f"_dmarc.example.test.{ZONE}", ZONE),
                         ("dmarc", "example.test", None))
        for name in (ZONE, f"example.test.{ZONE}", f"_spf.{ZONE}", f"_domainkey.example.test.{ZONE}",
                     f"x._spf.example.test.{ZONE}", "_spf.example.test.other.test"):
            self.assertIsNone(records.parse_hosted_name(name, ZONE), name)


class DNSServerCase(unittest.TestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        self.server = await TestDNSServer(reactor).start()
        self.addCleanup(self.server.stop)
        nameservers = [parse_nameserver(n) for n in self.server.nameservers]
        self.resolver = Resolver(reactor, nameservers=nameservers, timeout=2.0, cache_answers=False)

    def publish(self, found: list[dict[str, str]]) -> None:
        """Put records as the API lists them into the test zone."""
        for record in found:
            name, rtype, value = record["name"], record["type"], record["value"]
            if rtype == "TXT":
                self.server.txt(name, value)
            elif rtype == "CNAME":
                self.server.cname(name, value)
            elif rtype == "MX":
                preference, host = value.split()
                self.server.mx(name, (int(preference), host))
            elif rtype == "A":
                self.server.a(name, value)
            elif rtype == "AAAA":
                self.server.aaaa(name, value)
            else:
                raise AssertionError(f"unexpected record type {rtype}")


class TxtLookupTests(DNSServerCase):
    async def test_strings_joined_one_per_record(self) -> None:
        long_value = "v=DKIM1; k=rsa; p=" + "A" * 600
        self.server.txt("t.test", long_value, "second")
        self.assertEqual(sorted(await self.resolver.txt("t.test")), sorted([long_value, "second"]))

    async def test_cname_followed_nodata_and_nxdomain(self) -> None:
        self.server.cname("alias.test", "t.test")
        self.server.txt("t.test", "hello")
        self.server.a("plain.test", "192.0.2.1")
        self.assertEqual(await self.resolver.txt("alias.test"), ["hello"])
        self.assertEqual(await self.resolver.txt("plain.test"), [])
        with self.assertRaises(NoSuchDomain):
            await self.resolver.txt("missing.test")

    async def test_cname(self) -> None:
        self.server.cname("alias.test", "Target.test")
        self.server.a("target.test", "192.0.2.1")
        self.assertEqual(await self.resolver.cname("alias.test"), "target.test")
        self.assertIsNone(await self.resolver.cname("target.test"))
        with self.assertRaises(NoSuchDomain):
            await self.resolver.cname("missing.test")

    async def test_no_cache_when_asked(self) -> None:
        self.server.txt("t.test", "one")
        self.assertEqual(await self.resolver.txt("t.test"), ["one"])
        self.server.remove("t.test")
        self.server.txt("t.test", "two")
        self.assertEqual(await self.resolver.txt("t.test"), ["two"])


class StatusTests(DNSServerCase):
    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.spf_lookup = status.SPFLookup(self.server.nameservers, timeout=2.0)
        self.settings = make_settings()
        self.server.a("mx.smtpeter.test", "127.0.0.2")
        self.server.a("track.smtpeter.test", "127.0.0.5")
        self.server.aaaa("track.smtpeter.test", "::5")
        self.publish(records.selfhosted(self.settings, KEYS, OPERATOR, TODAY))

    async def check(self, settings: DomainSettings | None = None, keys: list[DkimKey] | None = None,
                    operator: Operator = OPERATOR) -> Any:
        return await status.check(settings or self.settings, KEYS if keys is None else keys, operator,
                                  self.resolver, self.spf_lookup)

    def assert_only_error(self, found: Any, item: str, remark: str) -> None:
        self.assertEqual(found.items, {i: ERROR if i == item else OK for i in STATUS_ITEMS}, found.remarks)
        self.assertEqual(found.remarks[item], remark)

    async def test_all_ok_with_selfhosted_records(self) -> None:
        found = await self.check()
        self.assertEqual(found.items, dict.fromkeys(STATUS_ITEMS, OK), found.remarks)
        self.assertEqual(found.domain, "example.test")
        self.assertEqual(found.published_selectors, ("zero", "one", "zero-ed"))
        self.assertEqual(found.remarks, {
            "validation": "The domain is approved",
            "spf": "SPF of bounces.example.test allows 127.0.0.1, ::1",
            "dkim": "DKIM keys zero, zero-ed are published",
            "dmarc": "DMARC of example.test: p=none, pct=100",
            "mx": "Bounce domain bounces.example.test is pointing to mx.smtpeter.test",
            "tracking": "Tracking host clicks.example.test points to track.smtpeter.test",
        })

    async def test_validation(self) -> None:
        settings = make_settings(approved=False)
        self.assert_only_error(await self.check(settings), "validation",
                               "The TXT record smtpeter-abcdefghijkl.example.test with the validation token "
                               "is missing")
        self.assertFalse(await status.ownership_seen(settings, self.resolver))
        self.publish([records.ownership_record(settings)])
        found = await self.check(settings)
        self.assertEqual(found.remarks["validation"],
                         "The ownership record smtpeter-abcdefghijkl.example.test is published")
        self.assertTrue(found.ok("validation"))
        self.assertTrue(await status.ownership_seen(settings, self.resolver))

    async def test_ownership_seen_is_false_when_dns_fails(self) -> None:
        self.server.servfail("smtpeter-abcdefghijkl.example.test")
        self.assertFalse(await status.ownership_seen(make_settings(approved=False), self.resolver))

    async def test_spf_not_including_an_address(self) -> None:
        self.server.remove("bounces.example.test", 16)
        self.server.txt("bounces.example.test", "v=spf1 ip4:127.0.0.1 ~all")
        self.assert_only_error(await self.check(), "spf",
                               "SPF of bounces.example.test does not allow ::1 (softfail)")

    async def test_spf_missing(self) -> None:
        self.server.remove("bounces.example.test", 16)
        self.assert_only_error(await self.check(), "spf", "bounces.example.test has no SPF record")

    async def test_spf_with_eleven_includes_is_a_permerror(self) -> None:
        self.server.remove("bounces.example.test", 16)
        includes = " ".join(f"include:i{n}.example.test" for n in range(11))
        self.server.txt("bounces.example.test", f"v=spf1 {includes} ip4:127.0.0.1 ip6:::1 -all")
        for n in range(11):
            self.server.txt(f"i{n}.example.test", "v=spf1 -all")
        found = await self.check()
        self.assert_only_error(found, "spf", found.remarks["spf"])
        self.assertEqual(found.remarks["spf"], "SPF of bounces.example.test is broken for 127.0.0.1, ::1 "
                                               "(permerror: Too many DNS lookups)")

    async def test_spf_through_includes_and_redirect(self) -> None:
        self.server.remove("bounces.example.test", 16)
        self.server.txt("bounces.example.test", "v=spf1 include:v4.example.test redirect=v6.example.test")
        self.server.txt("v4.example.test", "v=spf1 ip4:127.0.0.0/8 -all")
        self.server.txt("v6.example.test", "v=spf1 ip6:::1 -all")
        self.assertTrue((await self.check()).ok("spf"))

    async def test_spf_without_sending_addresses(self) -> None:
        found = await self.check(operator=replace(OPERATOR, sending_addresses=()))
        self.assert_only_error(found, "spf", "No sending addresses are configured ([domains] "
                                             "sending_addresses) to check SPF for")

    async def test_dkim_wrong_key(self) -> None:
        self.server.remove("zero._domainkey.example.test")
        self.server.txt("zero._domainkey.example.test", OTHER_RSA.public_record)
        found = await self.check()
        self.assert_only_error(found, "dkim", "zero._domainkey.example.test has a different key")
        self.assertEqual(found.published_selectors, ("one", "zero-ed"))

    async def test_dkim_same_key_written_differently_is_published(self) -> None:
        self.server.remove("zero._domainkey.example.test")
        key = records_p(KEYS[0].public_record)
        folded = " ".join(key[i:i + 60] for i in range(0, len(key), 60))
        self.server.txt("zero._domainkey.example.test", f"k=rsa;  p={folded} ;v=DKIM1")
        found = await self.check()
        self.assertTrue(found.ok("dkim"), found.remarks)
        self.assertIn("zero", found.published_selectors)

    async def test_dkim_missing_active_key(self) -> None:
        self.server.remove("zero-ed._domainkey.example.test")
        found = await self.check()
        self.assert_only_error(found, "dkim", "zero-ed._domainkey.example.test is missing")
        self.assertEqual(found.published_selectors, ("zero", "one"))

    async def test_dkim_next_key_missing_is_still_ok(self) -> None:
        self.server.remove("one._domainkey.example.test")
        found = await self.check()
        self.assertTrue(found.ok("dkim"))
        self.assertEqual(found.remarks["dkim"], "DKIM keys zero, zero-ed are published; not yet the next: "
                                                "one._domainkey.example.test is missing")
        self.assertEqual(found.published_selectors, ("zero", "zero-ed"))

    async def test_dkim_without_active_keys_needs_the_next_ones(self) -> None:
        keys = [replace(KEYS[0], state=RETIRED), KEYS[1]]
        self.assertEqual((await self.check(keys=keys)).remarks["dkim"], "DKIM keys one are published")
        self.server.remove("one._domainkey.example.test")
        self.assert_only_error(await self.check(keys=keys), "dkim", "one._domainkey.example.test is missing")
        self.assert_only_error(await self.check(keys=[]), "dkim", "The domain has no DKIM keys")

    async def test_dmarc_strict_spf_alignment(self) -> None:
        self.server.remove("_dmarc.example.test")
        self.server.txt("_dmarc.example.test", "v=DMARC1; p=reject; aspf=s; rua=mailto:dmarc@smtpeter.test")
        self.assert_only_error(await self.check(), "dmarc",
                               "DMARC of example.test requires strict SPF alignment (aspf=s), but bounces "
                               "come from bounces.example.test; use aspf=r")
        # Strict DKIM alignment is what we do anyway: d= is the sender domain.
        self.server.remove("_dmarc.example.test")
        self.server.txt("_dmarc.example.test", "v=DMARC1; p=reject; adkim=s")
        found = await self.check()
        self.assertTrue(found.ok("dmarc"))
        self.assertEqual(found.remarks["dmarc"], "DMARC of example.test: p=reject, pct=100; aggregate "
                                                 "reports do not go to dmarc@smtpeter.test")

    async def test_dmarc_missing_broken_or_twice(self) -> None:
        self.server.remove("_dmarc.example.test")
        self.assert_only_error(await self.check(), "dmarc", "_dmarc.example.test has no DMARC record")
        self.server.txt("_dmarc.example.test", "v=DMARC1; rua=mailto:dmarc@smtpeter.test")
        self.assert_only_error(await self.check(), "dmarc",
                               "The DMARC record of example.test has no valid policy (p=)")
        self.server.txt("_dmarc.example.test", "v=DMARC1; p=none")
        self.assert_only_error(await self.check(), "dmarc",
                               "_dmarc.example.test has 2 DMARC records (receivers then ignore them all)")

    async def test_mx_elsewhere(self) -> None:
        self.server.remove("bounces.example.test", 15)
        self.server.mx("bounces.example.test", (10, "mx.other.test"))
        self.assert_only_error(await self.check(), "mx", "Bounce domain bounces.example.test is not "
                                                         "pointing to mx.smtpeter.test "
                                                         "(its MX: mx.other.test)")
        self.server.remove("bounces.example.test", 15)
        self.assert_only_error(await self.check(), "mx", "Bounce domain bounces.example.test has no MX "
                                                         "record; it needs one pointing to mx.smtpeter.test")

    async def test_tracking_unresolvable(self) -> None:
        self.server.remove("clicks.example.test")
        self.assert_only_error(await self.check(), "tracking", "Tracking host clicks.example.test has no "
                                                               "address; it needs to point to "
                                                               "track.smtpeter.test")
        found = await self.check(make_settings(tracking="go.example.test"))
        self.assert_only_error(found, "tracking", "Tracking host go.example.test does not exist; it needs to "
                                                  "point to track.smtpeter.test")

    async def test_tracking_by_address(self) -> None:
        self.server.remove("clicks.example.test")
        self.server.a("clicks.example.test", "127.0.0.5")
        found = await self.check()
        self.assertEqual(found.remarks["tracking"], "Tracking host clicks.example.test resolves to "
                                                    "track.smtpeter.test")
        self.assertTrue(found.ok("tracking"))
        self.server.a("clicks.example.test", "192.0.2.9")
        self.assert_only_error(await self.check(), "tracking", "Tracking host clicks.example.test resolves "
                                                               "to 192.0.2.9, not to track.smtpeter.test")

    async def test_a_failing_lookup_is_that_items_error(self) -> None:
        self.server.servfail("_dmarc.example.test")
        found = await self.check()
        self.assert_only_error(found, "dmarc", found.remarks["dmarc"])
        self.assertIn("A DNS lookup failed: _dmarc.example.test TXT", found.remarks["dmarc"])
        self.assertIn("SERVFAIL", found.remarks["dmarc"])


def records_p(record: str) -> str:
    return record.partition("p=")[2]


# -- the hosted zone's server ------------------------------------------------------------------------


class HostedCase(unittest.TestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        self.domains = {"example.test": make_settings(
            spf_mechanisms=("include:extra.example.test",),
            dmarc=DmarcPolicy(policy="quarantine", percentage=100, start=datetime.date(2025, 3, 1),
                              end=datetime.date(2025, 3, 11)))}
        self.keys = {"example.test": list(KEYS)}
        self.reads: list[tuple[str, str]] = []
        self.clock = Clock()
        self.clock.advance(datetime.datetime(2025, 3, 6, 12, tzinfo=datetime.UTC).timestamp())
        operator = replace(OPERATOR, dmarc_address=f"dmarc@{ZONE}")
        self.hosted = HostedDNS(operator, self.settings_for, self.keys_for, reactor=reactor, clock=self.clock,
                                nameservers=[f"ns1.{ZONE}", "ns2.smtpeter.test"])
        await self.hosted.listen("udp:0:interface=127.0.0.1")
        self.addCleanup(self.hosted.stop)

    async def settings_for(self, domain: str) -> DomainSettings | None:
        self.reads.append(("settings", domain))
        return self.domains.get(domain)

    async def keys_for(self, domain: str) -> list[DkimKey]:
        self.reads.append(("keys", domain))
        return self.keys.get(domain, [])

    async def ask(self, name: str, rdtype: str = "TXT", tcp: bool = False,
                  **query: Any) -> dns.message.Message:
        """One query with dnspython over real sockets, in a thread (it blocks)."""
        message = dns.message.make_query(name, rdtype, **query)
        send = dns.query.tcp if tcp else dns.query.udp
        return await threads.deferToThread(send, message, "127.0.0.1", timeout=5, port=self.hosted.port)

    def txt(self, response: dns.message.Message) -> list[str]:
        return [b"".join(r.strings).decode() for rrset in response.answer for r in rrset]


class HostedDNSTests(HostedCase):
    async def test_dkim_over_udp_and_tcp(self) -> None:
        for tcp in (False, True):
            for key in KEYS:
                response = await self.ask(f"{key.selector}._domainkey.example.test.{ZONE}", tcp=tcp)
                self.assertEqual(response.rcode(), dns.rcode.NOERROR)
                self.assertTrue(response.flags & dns.flags.AA)
                self.assertEqual(self.txt(response), [key.public_record])
                self.assertEqual(response.answer[0].ttl, 300)

    async def test_spf_and_dmarc_of_today(self) -> None:
        response = await self.ask(f"_spf.EXAMPLE.test.{ZONE}")
        self.assertEqual(self.txt(response), ["v=spf1 ip4:127.0.0.1 ip6:::1 include:extra.example.test -all"])
        response = await self.ask(f"_dmarc.example.test.{ZONE}", tcp=True)
        self.assertEqual(self.txt(response), [f"v=DMARC1; p=quarantine; pct=50; rua=mailto:dmarc@{ZONE}; "
                                              "adkim=r; aspf=r"])
        self.clock.advance(86400)
        response = await self.ask(f"_dmarc.example.test.{ZONE}")
        self.assertIn("pct=60;", self.txt(response)[0])

    async def test_report_authorization(self) -> None:
        response = await self.ask(f"example.test._report._dmarc.{ZONE}")
        self.assertEqual(self.txt(response), ["v=DMARC1"])
        response = await self.ask(f"other.test._report._dmarc.{ZONE}")
        self.assertEqual(response.rcode(), dns.rcode.NXDOMAIN)

    async def test_negative_answers(self) -> None:
        for name in (f"_spf.unknown.test.{ZONE}", f"two._domainkey.example.test.{ZONE}",
                     f"_domainkey.unknown.test.{ZONE}", f"x._spf.example.test.{ZONE}"):
            response = await self.ask(name)
            self.assertEqual(response.rcode(), dns.rcode.NXDOMAIN, name)
            self.assertTrue(response.flags & dns.flags.AA)
            self.assertEqual([(r.name.to_text(), r.rdtype) for r in response.authority],
                             [(f"{ZONE}.", dns.rdatatype.SOA)])
        # Empty non-terminals above served names: NODATA, else resolvers would deny what is below (RFC 8020).
        for name in (f"test.{ZONE}", f"example.test.{ZONE}", f"_domainkey.example.test.{ZONE}"):
            response = await self.ask(name)
            self.assertEqual((response.rcode(), response.answer), (dns.rcode.NOERROR, []), name)
            self.assertEqual(response.authority[0].rdtype, dns.rdatatype.SOA)
        # A served name asked for another type.
        response = await self.ask(f"_spf.example.test.{ZONE}", "A")
        self.assertEqual((response.rcode(), response.answer), (dns.rcode.NOERROR, []))

    async def test_refused_outside_the_zone(self) -> None:
        for name in ("example.test", f"_spf.example.test.other-{ZONE}"):
            response = await self.ask(name)
            self.assertEqual(response.rcode(), dns.rcode.REFUSED)
            self.assertFalse(response.flags & dns.flags.AA)

    async def test_apex(self) -> None:
        response = await self.ask(ZONE, "SOA")
        soa = response.answer[0][0]
        self.assertEqual((soa.mname.to_text(), soa.rname.to_text(), soa.minimum),
                         (f"ns1.{ZONE}.", f"hostmaster.{ZONE}.", 60))
        response = await self.ask(ZONE, "NS", tcp=True)
        self.assertEqual(sorted(r.target.to_text() for r in response.answer[0]),
                         [f"ns1.{ZONE}.", "ns2.smtpeter.test."])
        response = await self.ask(ZONE, "TXT")
        self.assertEqual((response.rcode(), response.answer), (dns.rcode.NOERROR, []))

    async def test_reads_are_cached_a_minute(self) -> None:
        for _ in range(3):
            await self.ask(f"_spf.example.test.{ZONE}")
            await self.ask(f"zero._domainkey.example.test.{ZONE}")
        self.assertEqual(self.reads, [("settings", "example.test"), ("keys", "example.test")])
        self.keys["example.test"] = [OTHER_RSA]
        self.clock.advance(61)
        response = await self.ask(f"zero._domainkey.example.test.{ZONE}")
        self.assertEqual(self.txt(response), [OTHER_RSA.public_record])
        self.hosted.forget("example.test")
        self.keys["example.test"] = []
        response = await self.ask(f"zero._domainkey.example.test.{ZONE}")
        self.assertEqual(response.rcode(), dns.rcode.NXDOMAIN)

    async def test_large_answer_truncated_over_udp_whole_over_tcp(self) -> None:
        big = replace(KEYS[0], selector="big", public_record="v=DKIM1; k=rsa; p=" + "A" * 700)
        self.keys["example.test"] = [big]
        name = f"big._domainkey.example.test.{ZONE}"
        response = await self.ask(name, use_edns=False)
        self.assertTrue(response.flags & dns.flags.TC)
        self.assertEqual(response.answer, [])
        response = await self.ask(name, use_edns=0, payload=1232)  # fits in EDNS's 1232
        self.assertEqual(self.txt(response), [big.public_record])
        response = await self.ask(name, tcp=True, use_edns=0, payload=512)
        self.assertEqual(self.txt(response), [big.public_record])

    async def test_storage_failure_is_servfail(self) -> None:
        async def broken(domain: str) -> None:
            raise RuntimeError("storage is down")

        self.hosted._settings_for = broken
        response = await self.ask(f"_spf.example.test.{ZONE}")
        self.assertEqual(response.rcode(), dns.rcode.SERVFAIL)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    async def test_our_resolver_reads_it(self) -> None:
        resolver = Resolver(reactor, nameservers=[("127.0.0.1", self.hosted.port)], timeout=2.0)
        self.assertEqual(await resolver.txt(f"one._domainkey.example.test.{ZONE}"), [KEYS[1].public_record])

    def test_parse_listen(self) -> None:
        self.assertEqual(parse_listen("tcp:53"), ("", 53))
        self.assertEqual(parse_listen("udp:port=5353:interface=127.0.0.1"), ("127.0.0.1", 5353))
        self.assertEqual(parse_listen(r"tcp:53:interface=\:\:1"), ("::1", 53))
        for bad in ("tcp:interface=::1", "tcp:x", "tcp:53:backlog=5"):
            with self.assertRaises(ValueError):
                parse_listen(bad)


class RecommendedStatusTests(HostedCase, DNSServerCase):
    """The recommended records in the customer's zone (the test DNS server), their targets answered by
    our hosted DNS: the test server forwards the hosted zone to it, as a recursive resolver would."""

    async def setUp(self) -> None:  # type: ignore[override]
        await HostedCase.setUp(self)
        await DNSServerCase.setUp(self)
        self.domains["example.test"] = make_settings()
        self.server.forward(ZONE, f"127.0.0.1:{self.hosted.port}")
        self.server.a("mx.smtpeter.test", "127.0.0.2")
        self.server.a("track.smtpeter.test", "127.0.0.5")
        self.spf_lookup = status.SPFLookup(self.server.nameservers, timeout=2.0)
        self.publish(records.recommended(self.domains["example.test"], KEYS, OPERATOR, TODAY))

    async def check(self, operator: Operator = OPERATOR) -> Any:
        return await status.check(self.domains["example.test"], self.keys["example.test"], operator,
                                  self.resolver, self.spf_lookup)

    async def test_all_ok_and_rotation_needs_no_customer_change(self) -> None:
        found = await self.check()
        self.assertEqual(found.items, dict.fromkeys(STATUS_ITEMS, OK), found.remarks)
        self.assertEqual(found.published_selectors, ("zero", "one", "zero-ed"))
        # Rotation: one signs, zero retires, two is the next; the customer's CNAMEs stay as they are.
        two = make_key("two", "rsa", NEXT)
        self.keys["example.test"] = [replace(KEYS[0], state=RETIRED), replace(KEYS[1], state=ACTIVE), two,
                                     KEYS[2]]
        self.hosted.forget("example.test")
        found = await self.check()
        self.assertEqual(found.items, dict.fromkeys(STATUS_ITEMS, OK), found.remarks)
        self.assertEqual(found.published_selectors, ("zero", "one", "two", "zero-ed"))

    async def test_hosted_spf_has_the_domains_extra_mechanisms(self) -> None:
        # Mail from 127.0.0.9, an address only the customer's own include allows.
        operator = replace(OPERATOR, sending_addresses=("127.0.0.9",))
        self.server.txt("v4.example.test", "v=spf1 ip4:127.0.0.9 -all")
        found = await self.check(operator)
        self.assertEqual(found.remarks["spf"], "SPF of bounces.example.test does not allow 127.0.0.9 (fail)")
        self.domains["example.test"] = make_settings(spf_mechanisms=("include:v4.example.test",))
        self.hosted.forget("example.test")
        found = await self.check(operator)
        self.assertTrue(found.ok("spf"), found.remarks)
