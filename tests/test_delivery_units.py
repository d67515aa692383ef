"""Sans-IO pieces of delivery: replies, EHLO keywords, the DATA writer, throttles, retry rules."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from smtpeter.config import parse_config
from smtpeter.delivery.client_session import (
    ProtocolError,
    Reply,
    ReplyParser,
    capabilities_from_ehlo,
    data_payload,
)
from smtpeter.delivery.shaping import RateLimiter, profiles, shaping_for
from smtpeter.ingress.smtp.data import DataReader
from smtpeter.scheduler.retry import retry_delay, retry_hint


class ReplyTests(unittest.TestCase):
    def test_multiline_reply(self) -> None:
        parser = ReplyParser()
        self.assertIsNone(parser.line(b"250-mx.example Hello"))
        self.assertIsNone(parser.line(b"250-PIPELINING"))
        reply = parser.line(b"250 SIZE 1000")
        self.assertEqual((reply.code, reply.lines), (250, ("mx.example Hello", "PIPELINING", "SIZE 1000")))
        reply = parser.line(b"550 5.1.1 <x@y>: no such user")
        self.assertEqual((reply.status, reply.temporary, reply.ok), ("5.1.1", False, False))
        self.assertEqual(str(reply), "550 5.1.1 <x@y>: no such user")

    def test_garbage_is_a_protocol_error(self) -> None:
        for line in (b"hello", b"25 x", b"999 x"):
            with self.assertRaises(ProtocolError):
                ReplyParser().line(line)
        parser = ReplyParser()
        parser.line(b"250-a")
        with self.assertRaises(ProtocolError):
            parser.line(b"550 b")

    def test_capabilities(self) -> None:
        reply = Reply(250, ("mx Hello", "PIPELINING", "SIZE 2000", "8BITMIME", "DSN", "STARTTLS", "smtputf8"))
        caps = capabilities_from_ehlo(reply)
        self.assertTrue(caps.pipelining and caps.eightbitmime and caps.dsn)
        self.assertTrue(caps.starttls and caps.smtputf8)
        self.assertEqual(caps.size, 2000)
        self.assertFalse(capabilities_from_ehlo(Reply(250, ("mx", "SIZE"))).pipelining)
        self.assertIsNone(capabilities_from_ehlo(Reply(250, ("mx", "SIZE"))).size)


class DataPayloadTests(unittest.TestCase):
    def test_dot_line_on_a_16k_boundary_is_stuffed(self) -> None:
        # Twisted's client stuffs per 16 KiB chunk and misses exactly this one.
        head = b"Subject: x\r\n\r\n"
        filler = b"a" * (16384 - len(head) - 2) + b"\r\n"
        message = head + filler + b".\r\nMAIL FROM:<evil@x>\r\n.\r\n"
        self.assertEqual(len(head + filler), 16384)
        payload = data_payload(message)
        self.assertEqual(payload[16384:16388], b"..\r\n")
        self.assertNotIn(b"\r\n.\r\n", payload[:-3])
        self.assertTrue(payload.endswith(b"\r\n..\r\n.\r\n"))

    def test_first_line_and_crlf(self) -> None:
        self.assertEqual(data_payload(b".hidden\r\nx\r\n"), b"..hidden\r\nx\r\n.\r\n")
        self.assertEqual(data_payload(b"a\r\nb"), b"a\r\nb\r\n.\r\n")
        # No CR CR LF from CRLF input (Twisted's other client bug), and bare endings become CRLF.
        self.assertEqual(data_payload(b"a\nb\rc\r\n"), b"a\r\nb\r\nc\r\n.\r\n")
        self.assertEqual(data_payload(b""), b".\r\n")

    @given(st.binary(max_size=3000))
    def test_receiver_gets_back_the_message(self, body: bytes) -> None:
        normalised = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        if normalised and not normalised.endswith(b"\r\n"):
            normalised += b"\r\n"
        payload = data_payload(body)
        # Our own server's reader is an independent check of the framing.
        result, rest = DataReader(10**7, 10**7).feed(payload)
        if b"\x00" not in normalised:
            self.assertEqual(result, normalised)
        self.assertEqual(rest, b"")


class ThrottleTests(unittest.TestCase):
    def test_rate_limiter_spaces_events(self) -> None:
        limiter = RateLimiter(per_minute=60)
        self.assertEqual(limiter.delay(100.0), 0)
        self.assertAlmostEqual(limiter.delay(100.0), 1.0)
        self.assertAlmostEqual(limiter.delay(100.5), 0.5)
        self.assertEqual(limiter.delay(101.0), 0)

    def test_rate_limiter_burst_is_one_second(self) -> None:
        limiter = RateLimiter(per_minute=600)
        self.assertEqual([limiter.delay(10.0) for _ in range(10)], [0.0] * 10)
        self.assertGreater(limiter.delay(10.0), 0)

    def test_profiles_by_mx_suffix_and_overrides(self) -> None:
        config = parse_config({"delivery": {"profiles": {
            "gmail": {"max_connections": 2},
            "corp": {"mx_suffixes": [".corp.test"], "tls": "disabled", "messages_per_minute": 30},
        }}}).delivery
        table = profiles(config)
        gmail = shaping_for(["alt1.gmail-smtp-in.l.google.com"], config, table)
        self.assertEqual((gmail.name, gmail.max_connections, gmail.max_messages_per_connection, gmail.tls),
                         ("gmail", 2, 50, "required"))
        yahoo = shaping_for(["mta5.am0.yahoodns.net"], config, table)
        self.assertEqual((yahoo.max_messages_per_connection, yahoo.max_connections), (20, 10))
        tss04 = "421 4.7.0 [TSS04] Messages from 1.2.3.4"
        self.assertTrue(any(rule.pattern.search(tss04) for rule in yahoo.rules))
        outlook = shaping_for(["x.mail.protection.outlook.com"], config, table)
        self.assertEqual((outlook.name, outlook.max_connections, outlook.tls), ("outlook", 5, "required"))
        corp = shaping_for(["mx.corp.test"], config, table)
        self.assertEqual((corp.tls, corp.messages_per_minute, corp.idle_timeout), ("disabled", 30, 60))
        other = shaping_for(["mx.example.net"], config, table)
        self.assertEqual((other.name, other.max_connections, other.tls), ("default", 10, "opportunistic"))
        self.assertTrue(any(r.pattern.search("temporarily rate limited") for r in other.rules))


class RetryRuleTests(unittest.TestCase):
    def test_schedule_repeats_its_last_value(self) -> None:
        schedule = [600.0, 600.0, 1800.0, 1800.0, 3600.0, 3600.0, 7200.0]
        self.assertEqual([retry_delay(schedule, n) for n in range(1, 10)],
                         [600, 600, 1800, 1800, 3600, 3600, 7200, 7200, 7200])

    def test_hints(self) -> None:
        self.assertEqual(retry_hint("451 4.7.1 Greylisted, try again in 5 minutes"), 300)
        self.assertEqual(retry_hint("450 please retry after 120 seconds"), 120)
        self.assertEqual(retry_hint("421 try again in 2 hours"), 7200)
        self.assertEqual(retry_hint("451 try again in 1 s"), 30)  # bounded below
        self.assertIsNone(retry_hint("451 4.3.0 temporary failure"))
