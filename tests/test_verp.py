"""VERP return paths: the signed address, the per-recipient step, batching, the sender
authentication the pipeline looks up per message, and the envelope a real receiver sees."""

from __future__ import annotations

import hashlib
import hmac
import re

from twisted.internet import reactor
from twisted.trial import unittest

from smtpeter.envelope import Envelope, MessageOptions, Recipient
from smtpeter.ids import new_id
from smtpeter.links import TOKEN_CHARS, LinkSigner
from smtpeter.outbound import verp as verp_step
from smtpeter.outbound.job import OutboundJob, PreparedMessage, SenderAuth, StepSettings
from smtpeter.outbound.pipeline import Pipeline
from smtpeter.outbound.workers import Workers
from smtpeter.storage.models import StoredMessage
from smtpeter.verp import LOCAL_PART_CHARS, VerpSigner, verp_key
from tests.support.rig import Rig

KEYS = (b"first link key",)
SETTINGS = StepSettings("http://track.test", KEYS)
AUTH = SenderAuth("example.com", bounce_domain="bounces.example.com")
MIME = b"From: news@example.com\r\nTo: someone@dest.test\r\nSubject: hi\r\n\r\nHello.\r\n"
HTML = (b"From: news@example.com\r\nTo: someone@dest.test\r\nSubject: hi\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/html; charset=utf-8\r\n\r\n"
        b'<html><body><a href="https://www.example.net/offer">offer</a>'
        b'<img src="http://track.test/hosted/x/logo.png"></body></html>\r\n')


def stored(sender: str | None = "news@example.com", mime: bytes = MIME, **options: object) -> StoredMessage:
    return StoredMessage(new_id(), "acct", "api", Envelope(sender), mime, MessageOptions.parse(options), [],
                         0.0, 86400.0)


class VerpSignerTests(unittest.TestCase):
    def setUp(self) -> None:
        self.signer = VerpSigner(KEYS)
        self.id = new_id()
        self.address = self.signer.address(self.id, "Bounces.Example.COM")
        self.local = self.address.partition("@")[0]

    def test_round_trip(self) -> None:
        self.assertRegex(self.address, rf"^b-{self.id}-[0-9a-z]{{17}}@bounces\.example\.com$")
        self.assertEqual(len(self.local), LOCAL_PART_CHARS)
        self.assertLess(len(self.local), 64)  # RFC 5321 §4.5.3.1.1
        self.assertEqual(self.local, self.local.lower())
        self.assertEqual(self.signer.verify(self.local), self.id)
        self.assertEqual(VerpSigner(KEYS).verify(self.local), self.id)  # no state: another process verifies

    def test_a_receiver_that_changes_case_does_not_break_it(self) -> None:
        self.assertEqual(self.signer.verify(self.local.upper()), self.id)
        self.assertEqual(self.signer.verify(self.local.title()), self.id)

    def test_anything_changed_is_refused(self) -> None:
        for index in range(len(self.local)):
            for replacement in ("0", "z", "-"):
                if self.local[index] != replacement:
                    changed = self.local[:index] + replacement + self.local[index + 1:]
                    self.assertIsNone(self.signer.verify(changed), changed)
        for broken in ("", self.local[:-1], self.local + "a", self.local[2:], "x" + self.local[1:],
                       self.local.replace("-", "_"), "é" * LOCAL_PART_CHARS, self.address):
            self.assertIsNone(self.signer.verify(broken), broken)
        other = new_id()
        forged = f"b-{other}{self.local[len('b-') + len(other):]}"  # another id, this tag
        self.assertIsNone(self.signer.verify(forged))

    def test_another_key_is_refused_and_keys_rotate(self) -> None:
        self.assertIsNone(VerpSigner([b"another key"]).verify(self.local))
        rotated = VerpSigner([b"new key", *KEYS])
        self.assertEqual(rotated.verify(self.local), self.id)  # old addresses still verify
        newer = rotated.address(self.id, "bounces.example.com").partition("@")[0]
        self.assertNotEqual(newer, self.local)
        self.assertEqual(rotated.verify(newer), self.id)
        self.assertIsNone(self.signer.verify(newer))  # the old key set does not know the new key

    def test_the_key_is_not_the_tracking_links_key(self) -> None:
        self.assertNotEqual(verp_key(KEYS[0]), KEYS[0])
        tag = self.local[-16:]
        for key in (KEYS[0], hashlib.sha256(KEYS[0]).digest()):
            raw = hmac.new(key, b"verp\0" + self.id.encode(), hashlib.sha256).digest()[:10]
            self.assertNotIn(raw.hex(), tag)
        # The same keys sign links: a link token never shows up in a return path and back.
        link_signer = LinkSigner(KEYS)
        self.assertIsNone(link_signer.verify(self.local))

    def test_only_message_ids_are_signed(self) -> None:
        for bad in ("", "not an id", self.id.upper(), self.id + "0"):
            with self.assertRaises(ValueError):
                self.signer.address(bad, "bounces.example.com")
        with self.assertRaises(ValueError):
            VerpSigner([])


class VerpStepTests(unittest.TestCase):
    def test_when_the_step_is_needed(self) -> None:
        """SMTPeter's matrix: with trackbounces our envelope replaces the customer's or stands in for a
        missing one; without it, or without a bounce domain whose MX is ours, the envelope stays."""
        cases = [
            (stored(trackbounces=True), AUTH, True),
            (stored(None, trackbounces=True), AUTH, True),  # REST mail without an envelope
            (stored(trackbounces=False), AUTH, False),
            (stored(), AUTH, False),  # not said: off
            (stored(trackbounces=True), None, False),  # no approved sender domain
            (stored(trackbounces=True), SenderAuth("example.com"), False),  # bounce MX not ours (yet)
            (stored("", trackbounces=True), AUTH, False),  # the null sender stays null
        ]
        for message, auth, expected in cases:
            self.assertEqual(verp_step.needed(PreparedMessage(message, message.mime, auth=auth)), expected,
                             (message.envelope, message.options, auth))

    def test_the_envelope_sender_becomes_the_recipients_return_path(self) -> None:
        message = stored(trackbounces=True)
        recipient_id = new_id()
        job = OutboundJob(message, Envelope("news@example.com", (Recipient("a@dest.test"),), "HDRS", "env-1"),
                          MIME, (recipient_id,), AUTH)
        done = verp_step.run(job, SETTINGS)
        local, _, domain = done.envelope.sender.partition("@")
        self.assertEqual(domain, "bounces.example.com")
        self.assertEqual(VerpSigner(KEYS).verify(local), recipient_id)
        self.assertEqual((done.envelope.recipients, done.envelope.ret, done.envelope.envid, done.content),
                         (job.envelope.recipients, "HDRS", "env-1", MIME))  # only the sender changes
        self.assertEqual(message.envelope.sender, "news@example.com")  # the customer's, kept to forward to


class AuthorityCalls:
    def __init__(self, auth: SenderAuth | None = AUTH, fail: bool = False) -> None:
        self.auth = auth
        self.fail = fail
        self.calls: list[str] = []

    async def __call__(self, message: StoredMessage) -> SenderAuth | None:
        self.calls.append(message.id)
        if self.fail:
            raise RuntimeError("storage is down")
        return self.auth


class PipelineTests(unittest.TestCase):
    def setUp(self) -> None:
        self.workers = Workers(reactor, 0)
        self.addCleanup(self.workers.stop)

    async def batches(self, message: StoredMessage, authority: AuthorityCalls, count: int = 3) -> tuple:
        pipeline = Pipeline(self.workers, SETTINGS, authority=authority)
        recipients = [Recipient(f"r{n}@dest.test") for n in range(count)]
        ids = [new_id() for _ in recipients]
        return await pipeline.jobs(message, recipients, ids), recipients, ids

    async def test_each_recipient_its_own_transaction_with_its_own_return_path(self) -> None:
        batches, recipients, ids = await self.batches(stored(trackbounces=True), AuthorityCalls())
        self.assertEqual(len(batches), 3)
        signer = VerpSigner(KEYS)
        for position, batch in enumerate(batches):
            job = batch.job
            self.assertEqual((batch.positions, job.recipients, job.recipient_ids),
                             ((position,), (recipients[position],), (ids[position],)))
            self.assertEqual(signer.verify(job.envelope.sender.partition("@")[0]), ids[position])
            self.assertEqual(job.auth, AUTH)
            self.assertEqual(job.content, MIME)

    async def test_without_verp_recipients_share_a_transaction_and_the_envelope(self) -> None:
        for message, auth in ((stored(trackbounces=False), AUTH), (stored(trackbounces=True), None),
                              (stored(None, trackbounces=True), SenderAuth("example.com"))):
            (batch,), recipients, ids = await self.batches(message, AuthorityCalls(auth))
            self.assertEqual((batch.job.envelope.sender, batch.job.recipients, batch.job.recipient_ids,
                              batch.positions, batch.job.auth),
                             (message.envelope.sender or "news@example.com", tuple(recipients), tuple(ids),
                              (0, 1, 2), auth))  # REST mail without an envelope: its From address

    async def test_tracked_and_verp_copies_name_the_same_recipient(self) -> None:
        """Tracking and VERP both per recipient: the links and the return path of each copy carry
        that copy's recipient id; links to our own public URL are left alone."""
        batches, _, ids = await self.batches(
            stored(mime=HTML, trackbounces=True, trackclicks=True, trackopens=True), AuthorityCalls())
        links, verp = LinkSigner(KEYS), VerpSigner(KEYS)
        for position, batch in enumerate(batches):
            job = batch.job
            self.assertEqual(job.recipient_ids, (ids[position],))
            self.assertEqual(verp.verify(job.envelope.sender.partition("@")[0]), ids[position])
            tokens = re.findall(rb"http://track\.test/c/([A-Za-z0-9_-]{%d})/https/www\.example\.net/offer"
                                % TOKEN_CHARS, job.content)
            self.assertEqual(len(tokens), 1)
            self.assertEqual(links.verify(tokens[0].decode(), b"https://www.example.net/offer").recipient_id,
                             ids[position])
            self.assertIn(b'src="http://track.test/hosted/x/logo.png"', job.content)

    async def test_links_go_to_the_sender_domains_tracking_host(self) -> None:
        auth = SenderAuth("example.com", tracking_base="https://links.example.com")
        message = stored(mime=HTML, trackclicks=True)
        (batch,), _, _ = await self.batches(message, AuthorityCalls(auth), count=1)
        self.assertIn(b'href="https://links.example.com/c/', batch.job.content)
        self.assertNotIn(b"http://track.test/c/", batch.job.content)
        # http.public_url is still ours: a hosted image there is not sent through the image proxy.
        self.assertIn(b'src="http://track.test/hosted/x/logo.png"', batch.job.content)

    async def test_the_authority_is_asked_once_per_message(self) -> None:
        authority = AuthorityCalls()
        pipeline = Pipeline(self.workers, SETTINGS, authority=authority)
        message = stored(trackbounces=True)
        pipeline.hold(message)
        for chunk in range(5):
            recipients = [Recipient(f"r{chunk}-{n}@dest.test") for n in range(10)]
            batches = await pipeline.jobs(message, recipients, [new_id() for _ in recipients])
            self.assertTrue(all(batch.job.auth == AUTH for batch in batches))
        self.assertEqual(authority.calls, [message.id])
        pipeline.release(message.id)

    async def test_a_failing_authority_fails_the_preparation_not_the_signing(self) -> None:
        """No DKIM and no VERP because a lookup failed would be worse than trying again later."""
        authority = AuthorityCalls(fail=True)
        pipeline = Pipeline(self.workers, SETTINGS, authority=authority)
        message = stored(trackbounces=True)
        with self.assertRaises(RuntimeError):
            await pipeline.jobs(message, [Recipient("a@dest.test")], [new_id()])
        authority.fail = False
        (batch,) = await pipeline.jobs(message, [Recipient("a@dest.test")], [new_id()])
        self.assertEqual(batch.job.auth, AUTH)
        self.assertEqual(len(authority.calls), 2)  # the next caller tried again


class EndToEndTests(unittest.TestCase):
    async def test_the_receiver_sees_the_verp_return_path(self) -> None:
        """Through the running service: two recipients of one message at one receiving server arrive
        in two transactions, each MAIL FROM the return path naming that recipient."""
        rig = Rig(self)
        sink = rig.sink("127.0.0.2")
        await rig.start()
        rig.service.scheduler.pipeline.authority = AuthorityCalls()
        rig.dns.mail_host("dest.test", "mx.dest.test", "127.0.0.2")
        ids = await rig.send("a@dest.test", "b@dest.test", options={"trackbounces": True})
        plain = await rig.send("c@dest.test", "d@dest.test", options={"trackbounces": False})
        for message_id in (*ids, *plain):
            await rig.wait_for(message_id, "delivered")
        by_sender = {received.mail_from: received.recipients for received in sink.received}
        signer = VerpSigner(rig.service.scheduler.pipeline.settings.link_keys)
        verp = {signer.verify(sender.partition("@")[0]): recipients
                for sender, recipients in by_sender.items() if sender.endswith("@bounces.example.com")}
        self.assertEqual(verp, {ids[0]: ["a@dest.test"], ids[1]: ["b@dest.test"]})
        self.assertEqual(by_sender["news@example.com"], ["c@dest.test", "d@dest.test"])
