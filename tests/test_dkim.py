"""DKIM signing at the pipeline's last step, checked by an independent verifier (Perl's
Mail::DKIM, tests/support/mail_dkim.py) with the keys in the test DNS server."""

from __future__ import annotations

import pickle

import dkim as dkimpy
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.trial import unittest

from smtpeter.attempt import Capabilities
from smtpeter.delivery.client_session import Transaction
from smtpeter.envelope import Envelope, MessageOptions, Recipient
from smtpeter.ids import new_id
from smtpeter.outbound import dkim
from smtpeter.outbound import steps as outbound_steps
from smtpeter.outbound.job import OutboundJob, SenderAuth, StepSettings
from smtpeter.outbound.pipeline import Pipeline
from smtpeter.outbound.workers import Workers
from smtpeter.storage.models import StoredMessage
from tests.support import mail_dkim
from tests.support.rig import Rig
from tests.support.sink import Behaviour, Received

DOMAIN = "example.com"
# Made once for the module: an RSA-2048 key takes a moment to make.
KEYS = (dkim.SigningKey(DOMAIN, "zero", "rsa", dkim.new_key("rsa")),
        dkim.SigningKey(DOMAIN, "zero-ed", "ed25519", dkim.new_key("ed25519")))
AUTH = SenderAuth(DOMAIN, KEYS)
SEVEN_BIT_PEER = Behaviour(extensions=["PIPELINING", "SIZE 10000000", "ENHANCEDSTATUSCODES"])
EIGHT_BIT = ("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
             "Content-Transfer-Encoding: 8bit\r\n"
             "From: Nieuws <news@example.com>\r\nTo: <someone@dest.test>\r\nCc: other@dest.test\r\n"
             "Reply-To: reply@example.com\r\nSubject: Grüße\r\nX-Not-Signed: yes\r\n\r\n"
             "Grüße aus Köln\r\n.a line that starts with a dot\r\n.\r\n..\r\nend \t \r\n\r\n\r\n").encode()


def publish(rig: Rig, keys: tuple[dkim.SigningKey, ...] = KEYS) -> None:
    for key in keys:
        record = dkim.dns_record(key.algorithm, key.private_key)
        rig.dns.txt(f"{key.selector}._domainkey.{key.domain}", record)


class Authority:
    def __init__(self, auth: SenderAuth | None = AUTH) -> None:
        self.auth = auth

    async def __call__(self, message: StoredMessage) -> SenderAuth | None:
        return self.auth


def verdicts(found: list[mail_dkim.Verdict]) -> list[tuple[str, str, str, str]]:
    return sorted((v.selector, v.algorithm, v.result, v.details) for v in found)


PASSED = [("zero", "rsa-sha256", "pass", "pass"), ("zero-ed", "ed25519-sha256", "pass", "pass")]


class SignedHeadersTests(unittest.TestCase):
    def test_present_fields_are_signed_and_from_once_more(self) -> None:
        names = [b"Received", b"From", b"To", b"to", b"Subject", b"X-Mailer", b"Message-ID", b"Date",
                 b"DKIM-Signature", b"List-Unsubscribe"]
        self.assertEqual(dkim.signed_headers(names), [b"from", b"from", b"to", b"to", b"subject", b"date",
                                                      b"message-id", b"list-unsubscribe"])
        # Without a From, its absence is signed: a From added later breaks the signature.
        self.assertEqual(dkim.signed_headers([b"Subject"]), [b"from", b"subject"])

    def test_keys_and_jobs_pickle_for_the_workers(self) -> None:
        message = StoredMessage(new_id(), "acct", "smtp", Envelope("news@example.com"), b"", MessageOptions(),
                                [], 0.0, 1.0)
        job = OutboundJob(message, Envelope("news@example.com", (Recipient("a@dest.test"),)), EIGHT_BIT,
                          (new_id(),), AUTH)
        self.assertEqual(pickle.loads(pickle.dumps(job)), job)  # noqa: S301 (our own bytes)


# Bodies and messages made of the bytes canonicalisation cares about.
PIECES = st.sampled_from([b" ", b"  ", b"\t", b" \t ", b"\r\n", b"\r\n\r\n", b"\n", b"\r", b"a", b"word",
                          b"From: x", b":", b"\xc3\xa9"])
CRLF_BODIES = st.lists(st.sampled_from([b" ", b"  ", b"\t", b"\r\n", b"\r\n\r\n", b"a", b"word", b" \r\n"]),
                       max_size=40).map(b"".join)


class DkimpyEquivalenceTests(unittest.TestCase):
    """Where dkim.py does dkimpy's work its own faster way, the bytes are dkimpy's."""

    @settings(max_examples=500, deadline=None)
    @given(st.lists(PIECES, max_size=40).map(b"".join))
    def test_relaxed_body_canonicalisation(self, body: bytes) -> None:
        crlf_body = body.replace(b"\r\n", b"\n").replace(b"\r", b"").replace(b"\n", b"\r\n")
        for candidate in (body, crlf_body):
            self.assertEqual(dkim.relaxed_body(candidate), dkim.DKIMPY_RELAXED_BODY(candidate), candidate)
            self.assertEqual(dkim.relaxed_body(bytes(bytearray(candidate))),  # equal, not the same object
                             dkim.DKIMPY_RELAXED_BODY(candidate))

    @settings(max_examples=500, deadline=None)
    @given(st.lists(st.sampled_from([b"From: a", b"To: b", b" folded", b"\tfolded", b"Subject:x"]),
                    max_size=5), CRLF_BODIES, st.booleans(), st.booleans())
    def test_message_parse(self, fields: list[bytes], body: bytes, bare_lf: bool, separated: bool) -> None:
        message = b"\r\n".join(fields) + (b"\r\n\r\n" + body if separated else b"\r\n")
        if bare_lf:
            message = message.replace(b"\r\n", b"\n", 1)
        try:
            expected = dkimpy.rfc822_parse(message)
        except Exception as exc:  # dkimpy's errors for a broken header (an IndexError for a first line
            with self.assertRaises(type(exc)):  # that continues nothing): the same here
                dkim.rfc822_parse(message)
            return
        self.assertEqual(dkim.rfc822_parse(message), expected)

    def test_the_parsed_key_is_dkimpys(self) -> None:
        self.assertEqual(dkimpy.parse_pem_private_key(KEYS[0].private_key),
                         dkim.DKIMPY_PARSE_PEM(KEYS[0].private_key))


class IndependentVerifierTests(unittest.TestCase):
    """The checker itself: it must be able to say no."""

    async def test_mail_dkim_refuses_what_was_changed(self) -> None:
        rig = Rig(self)
        await rig.start()
        publish(rig)
        signed = dkim.sign(EIGHT_BIT, KEYS)
        self.assertEqual(verdicts(await mail_dkim.verify(signed, rig.dns.port)), PASSED)
        body_changed = signed.replace("Köln".encode(), b"Koln")
        header_changed = signed.replace(b"Reply-To: reply@", b"Reply-To: evil@")
        unsigned_header_changed = signed.replace(b"X-Not-Signed: yes", b"X-Not-Signed: changed")
        self.assertEqual({v.details for v in await mail_dkim.verify(body_changed, rig.dns.port)},
                         {"fail (body has been altered)"})
        self.assertEqual({v.result for v in await mail_dkim.verify(header_changed, rig.dns.port)}, {"fail"})
        self.assertEqual(verdicts(await mail_dkim.verify(unsigned_header_changed, rig.dns.port)), PASSED)
        rig.dns.remove("zero-ed._domainkey.example.com")
        rig.dns.txt("zero-ed._domainkey.example.com",
                    dkim.dns_record("ed25519", dkim.new_key("ed25519")))  # another key published
        self.assertEqual(verdicts(await mail_dkim.verify(signed, rig.dns.port))[1][2], "fail")


class EndToEndTests(unittest.TestCase):
    """Through the running service: the scheduler, the pipeline with its workers, the delivery client
    and a recording sink; what the sink stored is what Mail::DKIM checks."""

    async def start(self, **delivery: object) -> Rig:
        rig = Rig(self)
        rig.sink("127.0.0.2")
        rig.sink("127.0.0.3", SEVEN_BIT_PEER)
        await rig.start(**delivery)
        rig.service.scheduler.pipeline.authority = Authority()
        rig.dns.mail_host("full.test", "mx.full.test", "127.0.0.2")
        rig.dns.mail_host("bare.test", "mx.bare.test", "127.0.0.3")
        publish(rig)
        return rig

    async def deliver(self, rig: Rig, data: bytes, *recipients: str) -> list[Received]:
        ids = await rig.send(*recipients, data=data)
        for message_id in ids:
            await rig.wait_for(message_id, "delivered", timeout=60)
        return [received for sink in rig.sinks.values() for received in sink.received]

    async def test_signatures_verify_at_an_8bit_and_a_7bit_peer(self) -> None:
        """Signed in a worker process after the 7-bit conversion: both copies verify, RSA and ed25519;
        the lines that start with a dot went dot-stuffed over the wire and verify as stored."""
        rig = await self.start(transform_workers=1)
        eight, seven = sorted(await self.deliver(rig, EIGHT_BIT, "a@full.test", "b@bare.test"),
                              key=lambda received: received.peer)
        self.assertFalse(eight.data.isascii())
        self.assertTrue(seven.data.isascii())  # converted, then signed
        self.assertIn(b"Content-Transfer-Encoding: quoted-printable", seven.data)
        self.assertIn(b"\r\n..a line that starts with a dot", eight.raw_data)
        for received in (eight, seven):
            self.assertTrue(received.data.startswith(b"DKIM-Signature: "))
            found = await mail_dkim.verify(received.data, rig.dns.port)
            self.assertEqual(verdicts(found), PASSED)
            self.assertEqual({"".join(v.headers.split()) for v in found},
                             {"from:from:to:cc:subject:date:message-id:reply-to:mime-version:content-type:"
                              "content-transfer-encoding"})

    async def test_a_message_over_a_megabyte(self) -> None:
        rig = await self.start()
        body = b"".join(b"line %06d: " % n + "äöü ".encode() * 16 + b"\r\n" for n in range(14000))
        data = EIGHT_BIT.replace(b"\r\n\r\nGr", b"\r\n\r\n" + body + b"Gr", 1)
        self.assertGreater(len(data), 1024 * 1024)
        for received in await self.deliver(rig, data, "a@full.test", "b@bare.test"):
            self.assertGreater(len(received.data), 1024 * 1024)
            self.assertEqual(verdicts(await mail_dkim.verify(received.data, rig.dns.port)), PASSED)

    async def test_a_from_added_after_signing_breaks_the_signatures(self) -> None:
        rig = await self.start()
        (received,) = await self.deliver(rig, EIGHT_BIT, "a@full.test")
        for forged in (b"From: ceo@bank.example\r\n" + received.data,
                       received.data.replace(b"\r\n\r\n", b"\r\nFrom: ceo@bank.example\r\n\r\n", 1)):
            self.assertEqual({v.result for v in await mail_dkim.verify(forged, rig.dns.port)}, {"fail"})

    async def test_without_a_sender_domain_nothing_is_signed(self) -> None:
        rig = await self.start()
        rig.service.scheduler.pipeline.authority = Authority(None)
        (received,) = await self.deliver(rig, EIGHT_BIT, "a@full.test")
        self.assertNotIn(b"DKIM-Signature", received.data)


def broken_key(algorithm: str) -> dkim.SigningKey:
    return dkim.SigningKey(DOMAIN, "broken", algorithm, b"-----BEGIN PRIVATE KEY-----\nnot a key\n")


class FailureTests(unittest.TestCase):
    """A key that cannot sign is a warning: the others still sign, and with none the mail goes out."""

    async def for_peer(self, keys: tuple[dkim.SigningKey, ...]) -> tuple[bytes, list[str]]:
        message = StoredMessage(new_id(), "acct", "smtp", Envelope("news@example.com"), EIGHT_BIT,
                                MessageOptions(), [], 0.0, 1.0)
        job = OutboundJob(message, Envelope("news@example.com", (Recipient("a@dest.test"),)), EIGHT_BIT,
                          (new_id(),), SenderAuth(DOMAIN, keys))
        content, warnings = outbound_steps.wire_form(job, True, outbound_steps.LAST_STEPS,
                                                     StepSettings("http://t.test", (b"k",)))
        return content, warnings

    async def test_a_broken_key_leaves_the_other_signature(self) -> None:
        content, warnings = await self.for_peer((KEYS[0], broken_key("ed25519")))
        self.assertEqual(content.count(b"DKIM-Signature:"), 1)
        self.assertIn(b"s=zero;", content)
        (warning,) = warnings
        self.assertTrue(warning.startswith("dkim: ed25519 key broken._domainkey.example.com: "), warning)

    async def test_with_no_key_that_signs_the_mail_goes_out_unsigned(self) -> None:
        content, warnings = await self.for_peer((broken_key("rsa"),))
        self.assertEqual(content, EIGHT_BIT)
        self.assertEqual(len(warnings), 1)

    async def test_the_pipeline_hands_the_peer_the_signed_bytes(self) -> None:
        workers = Workers(reactor, 0)
        self.addCleanup(workers.stop)
        pipeline = Pipeline(workers, StepSettings("http://t.test", (b"k",)), authority=Authority())
        message = StoredMessage(new_id(), "acct", "smtp", Envelope("news@example.com"), EIGHT_BIT,
                                MessageOptions(), [], 0.0, 1.0)
        (batch,) = await pipeline.jobs(message, [Recipient("a@dest.test")], [new_id()])
        transaction = Transaction(batch.job.envelope, batch.job.content, job=batch.job)
        sent = await pipeline.for_peer(transaction, Capabilities(eightbitmime=True))
        self.assertEqual(sent.message.count(b"DKIM-Signature:"), 2)
        self.assertTrue(sent.message.endswith(EIGHT_BIT))
