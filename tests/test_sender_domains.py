"""Sender domains end to end with the test DNS server: a domain made over REST, approved once
its ownership record is published, the records /v1/dns gives published, its status all ok (and
each item an error with a remark when its record is wrong); mail over SMTP and REST signed with
its keys (Mail::DKIM verifies them), sent from a VERP address on its bounce domain that SPF (pyspf)
allows, aligned for DMARC; the keys rotate and the mail still verifies."""

from __future__ import annotations

import email
from typing import Any

from twisted.internet import reactor
from twisted.names import dns as names
from twisted.trial import unittest

from smtpeter.domains.status import SPFLookup
from smtpeter.verp import VerpSigner
from tests.support import mail_dkim
from tests.support.dns_server import TestDNSServer
from tests.support.http import Client
from tests.support.rig import SENDER_IP, Rig, message, sleep
from tests.support.sink import Received, free_port_on

DOMAIN = "news.test"
MX_HOST = "mx.smtpeter.test"
DAY = 86400.0


def publish(dns: TestDNSServer, records: list[dict[str, str]]) -> None:
    """Records as /v1/dns lists them, into the test zone (what was there under a name goes)."""
    for record in records:
        name, kind, value = record["name"], record["type"], record["value"]
        dns.remove(name, getattr(names, kind))
        if kind == "TXT":
            dns.txt(name, value)
        elif kind == "MX":
            preference, host = value.split()
            dns.mx(name, (int(preference), host))
        elif kind == "CNAME":
            dns.cname(name, value)
        elif kind == "A":
            dns.a(name, value)
        else:
            raise AssertionError(f"a record of type {kind} to publish: {record}")


class SenderDomainTests(unittest.TestCase):
    async def start(self) -> Rig:
        port = free_port_on("127.0.0.1")
        rig = self.rig = Rig(self)
        rig.sink("127.0.0.2")
        rig.sink(SENDER_IP)
        await rig.start(sections={
            "http": {"listen": [f"tcp:{port}:interface=127.0.0.1"], "public_url": f"http://127.0.0.1:{port}"},
            "domains": {"sending_addresses": ["127.0.0.1"], "mx_host": MX_HOST},
            "tracking": {"keys": ["one key for links and VERP"]}})
        rig.dns.mail_host("dest.test", "mx.dest.test", "127.0.0.2")
        self.client = Client(f"http://127.0.0.1:{port}", rig.login.token)
        return rig

    async def call(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        response = await self.client.request(method, path, **kwargs)
        self.assertEqual(response.code, status, response.body)
        return response.json

    def publish(self, records: list[dict[str, str]]) -> None:
        publish(self.rig.dns, records)

    async def status(self) -> dict[str, Any]:
        return await self.call("GET", f"/v1/dns/{DOMAIN}/status")

    async def delivered(self, count: int) -> Received:
        sink = self.rig.sinks["127.0.0.2"]
        deadline = reactor.seconds() + 15
        while len(sink.received) < count:
            self.assertLess(reactor.seconds(), deadline, "nothing was delivered")
            await sleep(0.05)
        return sink.received[count - 1]

    async def check_authenticated(self, received: Received, selectors: set[str], recipient_id: str) -> None:
        """DKIM by Mail::DKIM, the VERP return path, SPF by pyspf, DMARC alignment."""
        verdicts = await mail_dkim.verify(received.data, self.rig.dns.port)
        self.assertEqual({(v.domain, v.selector, v.result) for v in verdicts},
                         {(DOMAIN, s, "pass") for s in selectors})
        local, _, bounce_domain = received.mail_from.rpartition("@")
        self.assertEqual(bounce_domain, "bounces." + DOMAIN)
        self.assertEqual(VerpSigner([b"one key for links and VERP"]).verify(local), recipient_id)
        result, _ = await SPFLookup(self.rig.dns.nameservers).check(received.peer, received.mail_from,
                                                                     received.helo)
        self.assertEqual(result, "pass")
        # DMARC, relaxed: the signing domain is the From domain; the MAIL FROM domain is under it.
        author = email.message_from_bytes(received.data)["From"]
        self.assertTrue(author.endswith(f"@{DOMAIN}>") or author.endswith(f"@{DOMAIN}"), author)
        self.assertTrue(bounce_domain.endswith("." + DOMAIN))

    async def test_a_domain_from_registration_to_signed_mail_and_rotation(self) -> None:
        rig = await self.start()
        ownership = await self.call("POST", f"/v1/domain/{DOMAIN}")
        self.assertEqual((ownership["type"], ownership["name"].endswith("." + DOMAIN)), ("TXT", True))
        self.assertFalse((await self.call("GET", f"/v1/domain/{DOMAIN}"))["approved"])
        self.assertEqual(await self.call("POST", f"/v1/domain/{DOMAIN}"), ownership)  # not in DNS yet
        # Mail from a domain that is not approved is refused.
        response = await self.client.post("/v1/send", json_body={
            "recipient": "bob@dest.test", "from": f"news@{DOMAIN}", "text": "x"})
        self.assertEqual(response.code, 403, response.body)
        self.publish([ownership])
        domain = await self.call("POST", f"/v1/domain/{DOMAIN}", json_body={"policy": "quarantine",
                                                                            "percentage": 50})
        self.assertEqual((domain["approved"], domain["bounces"], domain["tracking"], domain["policy"],
                          domain["ips"]), (True, "bounces." + DOMAIN, "clicks." + DOMAIN, "quarantine",
                                           ["127.0.0.1"]))
        await self.call("POST", f"/v1/domain/{DOMAIN}", 400, json_body={"bounces": "bounces.other.test"})
        # The domain itself is neither: its MX would take the customer's mail, no CNAME at an apex.
        for setting in ("bounces", "tracking"):
            refused = await self.client.post(f"/v1/domain/{DOMAIN}", json_body={setting: DOMAIN.upper()})
            self.assertEqual(refused.code, 400, refused.body)
            self.assertIn(b"must be a name under", refused.body)
        self.assertEqual([d["name"] for d in await self.call("GET", "/v1/domains")], ["example.com", DOMAIN])

        # Before its records are published, nothing of the domain's is used, and the status says why.
        before = await self.status()
        self.assertEqual({before[item] for item in ("spf", "dkim", "dmarc", "mx", "tracking")}, {"error"})
        self.assertEqual(before["validation"], "ok")
        records = await self.call("GET", f"/v1/dns/{DOMAIN}/selfhosted")
        kinds = {(r["name"], r["type"]) for r in records}
        for expected in ((f"zero._domainkey.{DOMAIN}", "TXT"), (f"zero-ed._domainkey.{DOMAIN}", "TXT"),
                         (f"bounces.{DOMAIN}", "TXT"), (f"bounces.{DOMAIN}", "MX"),
                         (f"_dmarc.{DOMAIN}", "TXT"), (f"clicks.{DOMAIN}", "A")):
            self.assertIn(expected, kinds)
        self.assertNotIn("PRIVATE", str(records) + str(await self.call("GET", "/v1/dkimkeys")))
        self.publish(records)
        after = await self.status()
        self.assertEqual({k: after[k] for k in ("validation", "spf", "dkim", "dmarc", "mx", "tracking")},
                         dict.fromkeys(("validation", "spf", "dkim", "dmarc", "mx", "tracking"), "ok"),
                         after["remarks"])

        # Each record wrong in turn: its item is an error with a remark; put right, ok again.
        def replaced(name: str, kind: str, value: str) -> list[dict[str, str]]:
            return [{"name": name, "type": kind, "value": value}]

        original = {(r["name"], r["type"]): r for r in records}
        for item, wrong, word in (
            ("spf", replaced(f"bounces.{DOMAIN}", "TXT", "v=spf1 ip4:192.0.2.1 -all"), "127.0.0.1"),
            ("dkim", replaced(f"zero._domainkey.{DOMAIN}", "TXT", "v=DKIM1; k=rsa; p=MFwwDQYJKo"), "zero"),
            ("dmarc", replaced(f"_dmarc.{DOMAIN}", "TXT", "v=DMARC1; p=none; aspf=s"), "aspf"),
            ("mx", replaced(f"bounces.{DOMAIN}", "MX", "10 mx.elsewhere.test"), MX_HOST),
            ("tracking", replaced(f"clicks.{DOMAIN}", "A", "192.0.2.7"), "clicks." + DOMAIN),
        ):
            self.publish(wrong)
            found = await self.status()
            self.assertEqual(found[item], "error", (item, found))
            self.assertIn(word, found["remarks"][item])
            self.publish([original[(wrong[0]["name"], wrong[0]["type"])]])
            self.assertEqual((await self.status())[item], "ok")

        # Mail over SMTP and over REST: signed, VERP, SPF, aligned.
        data = message(sender=f"news@{DOMAIN}")
        (smtp_id,) = await rig.send("bob@dest.test", envelope=f"news@{DOMAIN}", data=data,
                                    options={"trackbounces": True})
        await rig.wait_for(smtp_id, "delivered")
        await self.check_authenticated(await self.delivered(1), {"zero", "zero-ed"}, smtp_id)
        (rest_id,) = await self.call("POST", "/v1/send", json_body={
            "recipient": "carol@dest.test", "from": f"news@{DOMAIN}", "subject": "hi", "text": "Hello."})
        await rig.wait_for(rest_id, "delivered")
        await self.check_authenticated(await self.delivered(2), {"zero", "zero-ed"}, rest_id)
        # REST mail without an envelope or bounce tracking leaves from its From address, never <>.
        (plain_id,) = await self.call("POST", "/v1/send", json_body={
            "recipient": "dave@dest.test", "from": f"news@{DOMAIN}", "text": "x", "trackbounces": False})
        await rig.wait_for(plain_id, "delivered")
        self.assertEqual((await self.delivered(3)).mail_from, f"news@{DOMAIN}")

        # A month on: the next keys (published before they sign) take over; the old ones stay
        # published a while for mail in flight.
        rig.clock.advance(31 * DAY)
        self.publish(await self.call("GET", f"/v1/dns/{DOMAIN}/selfhosted"))
        self.assertEqual((await self.status())["dkim"], "ok")
        keys = {k["selector"]: k["state"] for k in await self.call("GET", f"/v1/dkimkeys/{DOMAIN}")}
        self.assertEqual({s: keys[s] for s in ("zero", "zero-ed", "one", "one-ed")},
                         {"zero": "retired", "zero-ed": "retired", "one": "active", "one-ed": "active"})
        (rotated_id,) = await self.call("POST", "/v1/send", json_body={
            "recipient": "erin@dest.test", "from": f"news@{DOMAIN}", "text": "After the rotation."})
        await rig.wait_for(rotated_id, "delivered")
        await self.check_authenticated(await self.delivered(4), {"one", "one-ed"}, rotated_id)

        # Another account sees none of it; the owner deletes it, keys and all.
        other = await rig.storage.create_account("other")
        _, other_token = await rig.storage.create_api_token(other.id)
        stranger = Client(self.client.base_url, other_token)
        for path in (f"/v1/domain/{DOMAIN}", f"/v1/dns/{DOMAIN}/status", f"/v1/dkimkeys/{DOMAIN}",
                     f"/v1/spf/{DOMAIN}"):
            self.assertEqual((await stranger.get(path)).code, 404, path)
        self.assertEqual((await stranger.post(f"/v1/domain/{DOMAIN}")).code, 409)
        await self.call("DELETE", f"/v1/domain/{DOMAIN}")
        self.assertEqual(await self.call("GET", "/v1/dkimkeys"), [])
