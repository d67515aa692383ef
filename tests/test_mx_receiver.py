"""mx.listen and what it receives: the RCPT policy (VERP MACs, bounce domains, report addresses),
durable storage before the 250, processing into events and forwards per SMTPeter's matrix, and
the whole path end to end with real clients (swaks as the remote MTA)."""

from __future__ import annotations

import argparse
import datetime
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from smtpeter.bounces import classify
from smtpeter.bounces.returned import returned
from smtpeter.envelope import Envelope, MessageOptions
from smtpeter.ids import new_id
from smtpeter.ingress.mx.cli import received_list, received_show
from smtpeter.ingress.mx.policy import NO_SUCH_USER, NOT_OURS, InboundPolicy
from smtpeter.ingress.smtp.server_session import ServerSession, SessionPolicy
from smtpeter.storage.inbound import DONE, InboundRecipient
from smtpeter.storage.models import QueuedRecipient, StoredMessage
from smtpeter.verp import VerpSigner
from tests.support.backends import BackendMixin, both_backends
from tests.support.browser import Browser
from tests.support.harness import RawClient
from tests.support.http import Client
from tests.support.rig import SENDER_IP, Rig
from tests.support.sink import Behaviour, free_port_on
from tests.test_webhooks import Receiver, until

KEY = b"one key for links and VERP"
DOMAIN = "news.test"
BOUNCES = "bounces." + DOMAIN
MX_HOST = "mx.smtpeter.test"


def dsn(final_recipient: str, status: str = "5.1.1", action: str = "failed",
        diagnostic: str = "550 5.1.1 <{r}>: Recipient address rejected: User unknown in virtual table",
        return_path: str = "") -> bytes:
    """An RFC 3464 report as Postfix writes it, about a message we sent with ``return_path``."""
    diagnostic = diagnostic.format(r=final_recipient)
    return (
        "From: MAILER-DAEMON@mx.dest.test (Mail Delivery System)\r\n"
        "To: " + (return_path or "someone@example.com") + "\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Date: Wed, 2 Dec 2026 10:00:00 +0000\r\n"
        "Message-ID: <20261202100000.ABC@mx.dest.test>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\n"
        "This is the mail system at host mx.dest.test.\r\n\r\n"
        "I'm sorry to have to inform you that your message could not\r\nbe delivered to one or more "
        "recipients.\r\n\r\n"
        f"<{final_recipient}>: host mailstore.dest.test said: {diagnostic}\r\n\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.dest.test\r\nArrival-Date: Wed, 2 Dec 2026 09:59:58 +0000\r\n\r\n"
        f"Final-Recipient: rfc822; {final_recipient}\r\nAction: {action}\r\nStatus: {status}\r\n"
        f"Remote-MTA: dns; mailstore.dest.test\r\nDiagnostic-Code: smtp; {diagnostic}\r\n\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        + (f"Return-Path: <{return_path}>\r\n" if return_path else "")
        + f"From: <news@{DOMAIN}>\r\nTo: <{final_recipient}>\r\nSubject: Our news\r\n\r\n--B--\r\n"
    ).encode()


def auto_reply(sender: str, to: str) -> bytes:
    return (f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: Out of office: Our news\r\n"
            "Auto-Submitted: auto-replied\r\nDate: Wed, 2 Dec 2026 10:00:00 +0000\r\n\r\n"
            "I am out of the office until Monday and will read your mail then.\r\n").encode()


def complaint(recipient: str, return_path: str) -> bytes:
    """An RFC 5965 feedback report (abuse), as a mailbox provider's feedback loop sends it."""
    return (
        "From: <feedback@fbl.dest.test>\r\nTo: <" + return_path + ">\r\nSubject: Complaint about message\r\n"
        "Date: Wed, 2 Dec 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="F"\r\n\r\n'
        "--F\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n\r\n"
        "--F\r\nContent-Type: message/feedback-report\r\n\r\n"
        "Feedback-Type: abuse\r\nUser-Agent: FBL/1.0\r\nVersion: 1\r\n"
        f"Original-Mail-From: <{return_path}>\r\nOriginal-Rcpt-To: <{recipient}>\r\n"
        "Arrival-Date: Wed, 2 Dec 2026 09:00:00 +0000\r\nSource-IP: 127.0.0.1\r\n\r\n"
        "--F\r\nContent-Type: message/rfc822\r\n\r\n"
        f"Return-Path: <{return_path}>\r\nFrom: <news@{DOMAIN}>\r\nTo: <{recipient}>\r\n"
        "Subject: Our news\r\n\r\nBuy now.\r\n--F--\r\n").encode()


# -- the RCPT policy, without sockets ----------------------------------------------------------------

class PolicyTests(unittest.TestCase):
    def setUp(self) -> None:
        self.signer = VerpSigner([KEY])
        self.policy = InboundPolicy(self.signer, {BOUNCES}, ["dmarc@mx.smtpeter.test"], [MX_HOST])

    def test_routes(self) -> None:
        rid = new_id()
        verp = self.signer.address(rid, BOUNCES)
        self.assertEqual(self.policy.route(verp), InboundRecipient(verp, "verp", rid))
        # Receiving MTAs may change case: still ours.
        self.assertEqual(self.policy.route(verp.upper()).recipient_id, rid)
        self.assertEqual(self.policy.route("DMARC@mx.smtpeter.test").route, "report")
        self.assertEqual(self.policy.route(f"postmaster@{BOUNCES}").route, "postmaster")
        self.assertEqual(self.policy.route(f"postmaster@{MX_HOST}").route, "postmaster")

    def test_refusals(self) -> None:
        rid = new_id()
        verp = self.signer.address(rid, BOUNCES)
        local = verp.split("@")[0]
        forged = local[:-1] + ("a" if local[-1] != "a" else "b")
        self.assertEqual(self.policy.route(f"{forged}@{BOUNCES}"), NO_SUCH_USER)
        other_key = VerpSigner([b"someone else's key"]).address(rid, BOUNCES)
        self.assertEqual(self.policy.route(other_key), NO_SUCH_USER)
        self.assertEqual(self.policy.route(f"anyone@{BOUNCES}"), NO_SUCH_USER)
        # A valid token at a domain we do not receive for, and plain relaying: never.
        self.assertEqual(self.policy.route(f"{local}@elsewhere.test"), NOT_OURS)
        self.assertEqual(self.policy.route("victim@gmail.test"), NOT_OURS)
        self.assertEqual(self.policy.route("postmaster@gmail.test"), NOT_OURS)

    def test_the_session_asks_the_policy_and_offers_no_auth(self) -> None:
        policy = SessionPolicy("mx.test", auth_available=False, check_recipient=self.policy.check)
        session = ServerSession(policy, "127.0.0.1", tls=False, trusted=False)
        session.line(b"EHLO remote.test")
        ehlo = session.line(b"EHLO remote.test")[0]
        self.assertNotIn(b"AUTH", ehlo)
        self.assertIn(b"STARTTLS", ehlo)
        self.assertIn(b"250", session.line(b"MAIL FROM:<>")[0])
        verp = self.signer.address(new_id(), BOUNCES).encode()
        self.assertTrue(session.line(b"RCPT TO:<" + verp + b">")[0].startswith(b"250 2.1.5"))
        self.assertTrue(session.line(b"RCPT TO:<victim@gmail.test>")[0].startswith(b"550 5.7.1"))
        self.assertTrue(session.line(f"RCPT TO:<anyone@{BOUNCES}>".encode())[0].startswith(b"550 5.1.1"))
        self.assertTrue(session.line(b"AUTH PLAIN AGFiAGM=")[0].startswith(b"502"))


# -- what a returned message makes, without storage ------------------------------------------------

def stored(envelope: str | None, trackbounces: bool = True) -> StoredMessage:
    return StoredMessage("m1", "acct", "api", Envelope(envelope, ()), b"", MessageOptions(
        trackbounces=trackbounces), ["news"], 0.0, 0.0)


def queued(address: str, notify: str | None = None) -> QueuedRecipient:
    return QueuedRecipient(new_id(), "m1", "acct", address, "delivered", 1, 0.0, 0.0, None, 0, None,
                           None, None, None, notify=notify)


class ReturnedTests(unittest.TestCase):
    def test_a_dsn_is_a_bounce_and_a_failure_and_is_forwarded(self) -> None:
        raw = dsn("bob@dest.test")
        made = returned(classify(raw), "in1", raw, "b-x@" + BOUNCES, queued("bob@dest.test"),
                        stored("owner@news.test"))
        bounce, failure = made.events
        self.assertEqual(
            (bounce.type, bounce.data["reason"], bounce.data["hardbounce"], bounce.data["status"]),
            ("bounce", "userunknown", True, "5.1.1"))
        self.assertIn("Recipient address rejected", bounce.data["mime"])
        self.assertEqual((failure.type, failure.data["state"], failure.data["code"], failure.data["type"]),
                         ("failure", "bounce", 550, "failed"))
        self.assertEqual(made.forward.envelope.sender, "")
        self.assertEqual([r.address for r in made.forward.envelope.recipients], ["owner@news.test"])
        self.assertEqual(made.forward.mime, raw)
        self.assertFalse(made.forward.options.trackclicks)

    def test_the_matrix(self) -> None:
        raw = dsn("bob@dest.test")
        report = classify(raw)
        # No envelope of the customer's: intercepted and logged, not forwarded.
        self.assertIsNone(returned(report, "i", raw, "v", queued("bob@dest.test"), stored(None)).forward)
        self.assertIsNone(returned(report, "i", raw, "v", queued("bob@dest.test"), stored("")).forward)
        # NOTIFY=NEVER: a recognised DSN is not forwarded, but an auto-reply still is.
        never = queued("bob@dest.test", notify="NEVER")
        self.assertIsNone(returned(report, "i", raw, "v", never, stored("owner@news.test")).forward)
        reply = auto_reply("bob@dest.test", "v")
        made = returned(classify(reply), "i", reply, "v", never, stored("owner@news.test"))
        self.assertIsNotNone(made.forward)
        # A delay notice is forwarded only when DELAY was asked for; it is no failure.
        delayed = dsn("bob@dest.test", status="4.2.2", action="delayed",
                      diagnostic="452 4.2.2 Mailbox full, will retry")
        made = returned(classify(delayed), "i", delayed, "v", queued("bob@dest.test"), stored("o@news.test"))
        self.assertEqual([e.type for e in made.events], ["bounce"])
        self.assertIsNone(made.forward)
        asked = queued("bob@dest.test", notify="FAILURE,DELAY")
        made = returned(classify(delayed), "i", delayed, "v", asked, stored("o@news.test"))
        self.assertIsNotNone(made.forward)

    def test_replies_and_complaints_are_not_bounces(self) -> None:
        reply = auto_reply("bob@dest.test", "v")
        self.assertEqual([e.type for e in returned(classify(reply), "i", reply, "v", queued("bob@dest.test"),
                                                   stored("o@news.test")).events], ["response"])
        report = complaint("bob@dest.test", "v@" + BOUNCES)
        (abuse,) = returned(classify(report), "i", report, "v", queued("bob@dest.test"), stored(None)).events
        self.assertEqual((abuse.type, abuse.data["feedbacktype"], abuse.data["emailfrom"]),
                         ("abuse", "abuse", "bob@dest.test"))


# -- storage: kept before the 250, processed once, on both backends -----------------------------

class InboundStorage(BackendMixin):
    async def test_a_crash_mid_processing_leaves_the_message_due(self) -> None:
        storage = await self.open_storage()
        recipients = [InboundRecipient("b-x@" + BOUNCES, "verp", new_id())]
        await storage.store_inbound("a" * 18, "127.0.0.7", "remote.test", True, "", recipients,
                                    b"Subject: x\r\n\r\n")
        (claimed,) = await storage.claim_inbound("node-1", 10, lease=60)
        self.assertEqual((claimed.mime, claimed.recipients, claimed.tls, claimed.attempts),
                         (b"Subject: x\r\n\r\n", recipients, True, 1))
        self.assertEqual(await storage.claim_inbound("node-2", 10, lease=60), [])  # leased
        # node-1 dies; after its lease another node takes it, and closes it once.
        storage.clock = _Later(storage.clock, 61)
        (again,) = await storage.claim_inbound("node-2", 10, lease=60)
        self.assertEqual(again.attempts, 2)
        await storage.commit_inbound([storage.inbound_processed(again.id, DONE, "bounce", "acct", {"n": 1})])
        storage.clock = _Later(storage.clock, 120)
        self.assertEqual(await storage.claim_inbound("node-3", 10, lease=60), [])
        kept = await storage.inbound_message(again.id)
        self.assertEqual((kept.state, kept.kind, kept.account_id, kept.result),
                         (DONE, "bounce", "acct", {"n": 1}))


class _Later:
    def __init__(self, clock: Any, seconds: float) -> None:
        self.clock, self.offset = clock, seconds

    def seconds(self) -> float:
        return self.clock.seconds() + self.offset


InboundStorageSQLite, InboundStoragePostgres = both_backends(InboundStorage)


# -- end to end ----------------------------------------------------------------------------------

def refuse_gone(recipient: str) -> tuple[int, str]:
    if recipient.startswith("gone@"):
        return 550, f"5.1.1 <{recipient}>: Recipient address rejected: User unknown in local recipient table"
    return 250, "2.1.5 Ok"


class ReceiverCase(unittest.TestCase):
    """smtpeter with mx.listen, a sender domain whose mail gets VERP, and the remote side's servers."""

    async def start(self, mx_listen: list[str] | None = None) -> Rig:
        http_port, mx_port = free_port_on("127.0.0.1"), free_port_on("127.0.0.1")
        self.mx_port = mx_port
        rig = self.rig = Rig(self)
        rig.sink("127.0.0.2", Behaviour(rcpt_reply=refuse_gone))  # dest.test
        self.owner_sink = rig.sink("127.0.0.3")  # news.test's own mail server: forwards land here
        rig.sink(SENDER_IP)
        await rig.start(sections={
            "http": {"listen": [f"tcp:{http_port}:interface=127.0.0.1"],
                     "public_url": f"http://127.0.0.1:{http_port}"},
            "domains": {"sending_addresses": ["127.0.0.1"], "mx_host": MX_HOST},
            "tracking": {"keys": [KEY.decode()]},
            "mx": {"listen": mx_listen or [f"tcp:{mx_port}:interface=127.0.0.1"]},
            "webhooks": {"allow_networks": ["127.0.0.5/32"], "timeout": 2.0}})
        rig.dns.mail_host("dest.test", "mx.dest.test", "127.0.0.2")
        rig.dns.mail_host(DOMAIN, "mx.news.test", "127.0.0.3")
        self.client = Client(f"http://127.0.0.1:{http_port}", rig.login.token)
        await self.sender_domain()
        return rig

    async def call(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        response = await self.client.request(method, path, **kwargs)
        self.assertEqual(response.code, status, response.body)
        return response.json

    async def sender_domain(self) -> None:
        """news.test registered, approved and its records published: mail from it gets VERP."""
        from twisted.names import dns as names

        ownership = await self.call("POST", f"/v1/domain/{DOMAIN}")
        self.rig.dns.txt(ownership["name"], ownership["value"])
        await self.call("POST", f"/v1/domain/{DOMAIN}")
        for record in await self.call("GET", f"/v1/dns/{DOMAIN}/selfhosted"):
            name, kind, value = record["name"], record["type"], record["value"]
            self.rig.dns.remove(name, getattr(names, kind))
            if kind == "TXT":
                self.rig.dns.txt(name, value)
            elif kind == "MX":
                self.rig.dns.mx(name, (int(value.split()[0]), value.split()[1]))
            elif kind == "A":
                self.rig.dns.a(name, value)
        status = await self.call("GET", f"/v1/dns/{DOMAIN}/status")
        self.assertEqual(status["mx"], "ok", status["remarks"])

    async def remote_sends(self, to: str, data: bytes, sender: str = "<>",
                           extra: tuple[str, ...] = ()) -> tuple[int, str]:
        """The remote MTA (swaks, a real client) hands ``data`` to mx.listen."""
        with tempfile.NamedTemporaryFile(suffix=".eml", delete=False) as handle:
            handle.write(data)
        self.addCleanup(Path(handle.name).unlink)
        return await self.rig.harness.swaks("--from", sender, "--to", to, "--data", f"@{handle.name}",
                                            "--helo", "mx.dest.test", *extra, port=self.mx_port)

    async def events_of(self, message_id: str, kind: str, count: int = 1) -> list[Any]:
        async def found() -> bool:
            return len([e for e in await self.rig.events(message_id) if e.type == kind]) >= count
        await until(found, f"{count} {kind} event(s) of {message_id}")
        return [e for e in await self.rig.events(message_id) if e.type == kind]



class ReceiverEndToEnd(ReceiverCase):
    async def test_what_comes_back_end_to_end(self) -> None:
        rig = await self.start()
        receiver = await Receiver("127.0.0.5").start(self)
        hook = await self.call("POST", "/v1/webhook",
                               json_body={"type": "bounce", "url": receiver.url + "/b"})
        receiver.secrets.append(hook["secret"])

        # One recipient refused during delivery, one accepted whose server bounces it later.
        sent = await self.call("POST", "/v1/send", json_body={
            "recipients": ["bob@dest.test", "gone@dest.test", "carol@dest.test", "dave@dest.test"],
            "from": f"news@{DOMAIN}", "envelope": f"owner@{DOMAIN}", "subject": "Our news", "text": "Hi.",
            "trackbounces": True, "tags": ["news"]})
        ids = {address: mid for mid, address in sent.items()}
        gone = await rig.wait_for(ids["gone@dest.test"], "failed")
        self.assertEqual(gone.last_code, 550)
        (failure,) = await self.events_of(ids["gone@dest.test"], "failure")
        self.assertEqual((failure.data["reason"], failure.data["hardbounce"]), ("userunknown", True))
        for address in ("bob@dest.test", "carol@dest.test", "dave@dest.test"):
            await rig.wait_for(ids[address], "delivered")
        paths = {r.recipients[0]: r.mail_from for r in rig.sinks["127.0.0.2"].received}
        signer = VerpSigner([KEY])
        for address in ("bob@dest.test", "carol@dest.test", "dave@dest.test"):
            local, _, domain = paths[address].rpartition("@")
            self.assertEqual((signer.verify(local), domain), (ids[address], BOUNCES))

        # Later, bob's server sends a DSN to bob's VERP address.
        code, transcript = await self.remote_sends(paths["bob@dest.test"], dsn("bob@dest.test",
                                                                             return_path=paths["bob@dest.test"]))
        self.assertEqual(code, 0, transcript)
        self.assertIn("250 2.0.0 Ok, received as", transcript)
        (bounce,) = await self.events_of(ids["bob@dest.test"], "bounce")
        self.assertEqual((bounce.data["reason"], bounce.data["hardbounce"], bounce.data["status"],
                          bounce.data["envelope"]), ("userunknown", True, "5.1.1", paths["bob@dest.test"]))
        (late_failure,) = await self.events_of(ids["bob@dest.test"], "failure")
        self.assertEqual((late_failure.data["state"], late_failure.data["reason"]), ("bounce", "userunknown"))
        received = await rig.storage.inbound_message(bounce.data["inbound"])
        self.assertIn(b"Final-Recipient: rfc822; bob@dest.test", received.mime)
        self.assertEqual((received.state, received.kind), (DONE, "bounce"))

        # The user-unknown bounce suppresses bob (and the synchronous 550 gone@): the next message to bob
        # fails at once, with no delivery attempt.
        async def suppressed() -> bool:
            entries = await self.call("GET", "/v1/suppressions")
            return {e["address"] for e in entries} >= {"bob@dest.test", "gone@dest.test"}
        await until(suppressed, "bob and gone to be suppressed")
        (again,) = await self.call("POST", "/v1/send", json_body={
            "recipient": "bob@dest.test", "from": f"news@{DOMAIN}", "text": "Again.", "trackbounces": True})
        refused = await rig.wait_for(again, "failed")
        self.assertEqual(refused.attempts, 0)
        self.assertEqual([r.recipients for r in rig.sinks["127.0.0.2"].received].count(["bob@dest.test"]), 1)

        # Forwarded to the customer's envelope, from the null sender.
        await until(lambda: self.owner_sink.received, "the forward")
        (forward,) = self.owner_sink.received
        self.assertEqual((forward.mail_from, forward.recipients), ("", [f"owner@{DOMAIN}"]))
        self.assertIn(b"Final-Recipient: rfc822; bob@dest.test", forward.data)
        self.assertIn(b"Received: from mx.dest.test", forward.data)

        # The webhook receiver gets it, signed.
        await until(lambda: receiver.successes("/b"), "the bounce webhook")
        call = receiver.successes("/b")[0]
        self.assertTrue(call.verified)
        self.assertEqual((call.payload["type"], call.payload["recipient"], call.payload["id"],
                          call.payload["reason"]),
                         ("bounce", "bob@dest.test", ids["bob@dest.test"], "userunknown"))
        self.assertIn("Undelivered Mail Returned to Sender", call.payload["mime"])

        # The customer sees it in the dashboard, in a real browser: bob's timeline has the delivery and
        # the bounce with its reason.
        browser = await Browser().start()
        self.addCleanup(browser.stop)

        def timeline(page: Any) -> str:
            page.goto(self.client.base_url + "/dashboard/login")
            page.fill("input[name=token]", rig.login.token)
            page.click("button[type=submit]")
            page.wait_for_load_state()
            page.goto(self.client.base_url + f"/dashboard/messages/{ids['bob@dest.test']}")
            return page.inner_text("#timeline").lower()
        shown = await browser.run(timeline)
        for seen in ("delivery", "bounce", "reason: userunknown (hard)"):
            self.assertIn(seen, shown)
        await browser.screenshot("dashboard-message-bounced")

        # An auto-reply and a complaint are told apart from bounces.
        code, transcript = await self.remote_sends(paths["carol@dest.test"],
                                                   auto_reply("carol@dest.test", paths["carol@dest.test"]),
                                                   sender="carol@dest.test")
        self.assertEqual(code, 0, transcript)
        (response,) = await self.events_of(ids["carol@dest.test"], "response")
        self.assertIn("Out of office", response.data["mime"])
        code, transcript = await self.remote_sends(paths["dave@dest.test"],
                                                   complaint("dave@dest.test", paths["dave@dest.test"]),
                                                   sender="feedback@fbl.dest.test")
        self.assertEqual(code, 0, transcript)
        (abuse,) = await self.events_of(ids["dave@dest.test"], "abuse")
        self.assertEqual(abuse.data["feedbacktype"], "abuse")
        for address in ("carol@dest.test", "dave@dest.test"):
            kinds = [e.type for e in await rig.events(ids[address])]
            self.assertNotIn("bounce", kinds)
            self.assertNotIn("failure", kinds)

        metrics = rig.service.metrics.registry
        for name, value in (("smtpeter_received_total", 3), ("smtpeter_bounces_received_total", 1),
                            ("smtpeter_responses_received_total", 1),
                            ("smtpeter_complaints_received_total", 1)):
            self.assertEqual(metrics.get_sample_value(name), value, name)

        # Log files with SMTPeter's columns.
        day = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
        (row,) = await self.call("GET", f"/v1/logfiles/bounces.{day}.log/json")
        self.assertEqual((row["id"], row["recipient"], row["envelope"], row["tags"]),
                         (ids["bob@dest.test"], "bob@dest.test", paths["bob@dest.test"], "news"))
        self.assertIn("Final-Recipient", row["mime"])
        (row,) = await self.call("GET", f"/v1/logfiles/responses.{day}.log/json")
        self.assertEqual(row["recipient"], "carol@dest.test")
        (row,) = await self.call("GET", f"/v1/logfiles/abuses.{day}.log/json")
        self.assertEqual(row["recipient"], "dave@dest.test")
        events = await self.call("GET", f"/v1/events/messageid/{ids['bob@dest.test']}")
        self.assertIn("bounce", [e["event"] for e in events])

        # A forged bounce (a made-up tag) and mail for anyone else are refused at RCPT.
        local = paths["bob@dest.test"].split("@")[0]
        forged = local[:-2] + ("aa" if local[-2:] != "aa" else "bb")
        code, transcript = await self.remote_sends(f"{forged}@{BOUNCES}", dsn("bob@dest.test"))
        self.assertNotEqual(code, 0)
        self.assertIn("550 5.1.1", transcript)
        code, transcript = await self.remote_sends("victim@gmail.test", b"Subject: relay?\r\n\r\nx\r\n",
                                                   sender="spammer@evil.test")
        self.assertIn("550 5.7.1", transcript)
        self.assertEqual(len(await rig.storage.inbound_messages()), 3)
        # Bob's DSN, carol's auto-reply and the complaint about dave: all were sent to the envelope.
        self.assertEqual(len(self.owner_sink.received), 3)

        # A DMARC aggregate report to our report address is kept for the account whose domain it is about.
        fixtures = Path(__file__).parent / "fixtures" / "dmarc"
        code, transcript = await self.remote_sends(f"dmarc@{MX_HOST}", (fixtures / "google.eml").read_bytes(),
                                                   sender="noreply-dmarc-support@google.com")
        self.assertEqual(code, 0, transcript)

        async def reported() -> bool:
            return day in (await self.call("GET", "/v1/dmarc"))
        await until(reported, "the DMARC report")
        response = await self.client.get(f"/v1/dmarc/{day}/google.com/example.com")
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.body, (fixtures / "google.xml").read_bytes())
        (dmarc,) = [m for m in await rig.storage.inbound_messages() if m.kind == "dmarc"]
        self.assertEqual((dmarc.state, dmarc.account_id, dmarc.result["outcome"]),
                         (DONE, rig.login.account_id, "stored"))

    async def test_starttls_and_implicit_tls_and_bare_line_feeds(self) -> None:
        tls_port = free_port_on("127.0.0.1")
        self.plain_port = free_port_on("127.0.0.1")
        rig = await self.start([f"tcp:{self.plain_port}:interface=127.0.0.1",
                                f"ssl:{tls_port}:interface=127.0.0.1"])
        (mid,) = (await self.call("POST", "/v1/send", json_body={
            "recipient": "bob@dest.test", "from": f"news@{DOMAIN}", "envelope": f"owner@{DOMAIN}",
            "text": "Hi.", "trackbounces": True})).keys()
        await rig.wait_for(mid, "delivered")
        verp = rig.sinks["127.0.0.2"].received[0].mail_from
        self.mx_port = self.plain_port
        code, transcript = await self.remote_sends(verp, dsn("bob@dest.test"), extra=("--tls",))
        self.assertEqual(code, 0, transcript)
        self.assertIn("STARTTLS", transcript)
        self.mx_port = tls_port
        code, transcript = await self.remote_sends(verp, dsn("bob@dest.test"), extra=("--tls-on-connect",))
        self.assertEqual(code, 0, transcript)
        await self.events_of(mid, "bounce", count=2)
        received = await rig.storage.inbound_messages()
        self.assertEqual(sorted(m.tls for m in received), [True, True])
        # A bare LF in DATA is refused on all three paths, and nothing is stored.
        for port, mode in ((self.plain_port, "plain"), (self.plain_port, "starttls"), (tls_port, "implicit")):
            final = await deferToThread(bare_line_feed, port, mode, verp.encode())
            self.assertTrue(final.startswith("550 5.5.2"), (mode, final))
        self.assertEqual(len(await rig.storage.inbound_messages()), 2)


def bare_line_feed(port: int, mode: str, verp: bytes) -> str:
    """A remote MTA whose message holds a bare LF (in a thread: the client blocks)."""
    client = RawClient.greeted(port, implicit_tls=mode == "implicit")
    try:
        if mode == "starttls":
            client.starttls()
            client.command(b"EHLO remote.test")
        for line, expected in ((b"MAIL FROM:<>", 250), (b"RCPT TO:<" + verp + b">", 250), (b"DATA", 354)):
            code, lines = client.command(line)
            assert code == expected, (line, lines)
        client.send(b"Subject: x\r\n\r\nbare\nline feed\r\n.\r\n")
        return client.reply()[1][-1]
    finally:
        client.close()


class ReceiverRestart(ReceiverCase):
    async def test_what_was_acknowledged_is_processed_after_a_restart(self) -> None:
        rig = await self.start()
        (mid,) = (await self.call("POST", "/v1/send", json_body={
            "recipient": "bob@dest.test", "from": f"news@{DOMAIN}", "envelope": f"owner@{DOMAIN}",
            "text": "Hi.", "trackbounces": True})).keys()
        await rig.wait_for(mid, "delivered")
        verp = rig.sinks["127.0.0.2"].received[0].mail_from
        # Processing stops (as if the process died right after the 250): the message is kept.
        await rig.service.inbound_processor.stop()
        code, transcript = await self.remote_sends(verp, dsn("bob@dest.test"))
        self.assertEqual(code, 0, transcript)
        (kept,) = await rig.storage.inbound_messages()
        self.assertEqual(kept.state, "new")
        self.assertNotIn("bounce", [e.type for e in await rig.events(mid)])
        await rig.harness.stop_async()
        await rig.harness.start()
        (bounce,) = await self.events_of(mid, "bounce")
        self.assertEqual((bounce.data["inbound"], bounce.data["reason"]), (kept.id, "userunknown"))
        self.assertEqual((await rig.storage.inbound_message(kept.id)).state, DONE)
        # What an operator sees of it (smtpeter received list|show).
        listed = await received_list(rig.storage, argparse.Namespace(state="all", limit=10), None)
        self.assertEqual([(m["id"], m["state"], m["kind"], m["to"]) for m in listed],
                         [(kept.id, "done", "bounce", [verp])])
        shown = await received_show(rig.storage, argparse.Namespace(id=kept.id), None)
        self.assertIn("Final-Recipient: rfc822; bob@dest.test", shown["mime"])
        self.assertEqual(shown["result"]["about"][0]["id"], mid)
        # A report to postmaster is matched by the VERP return path it quotes.
        code, transcript = await self.remote_sends(f"postmaster@{BOUNCES}",
                                                   dsn("bob@dest.test", return_path=verp))
        self.assertEqual(code, 0, transcript)
        await self.events_of(mid, "bounce", count=2)
