"""Delivery status notifications: RFC 3464 structure, RFC 6533 global variant, and hygiene."""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
from email.message import EmailMessage

from twisted.trial import unittest

from smtpeter.events import dsn
from smtpeter.events.dsn import RecipientStatus, build_dsn

ORIGINAL = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: Lunch\r\n"
    b"Message-ID: <m1@example.org>\r\n"
    b"X-Smtpeter-Id: abc123\r\n"
    b"\r\n"
    b"Shall we?\r\n"
    b"-- \r\n"
    b"Alice\r\n"
)
ARRIVAL = 1_700_000_000.0
NOW = 1_700_003_600.0
ATTEMPT = 1_700_003_500.0
RETRY_UNTIL = 1_700_432_000.0

BOB = RecipientStatus(
    final_recipient="bob@example.net",
    action="failed",
    status="5.1.1",
    original_recipient="rfc822;Bob@Example.NET",
    remote_mta="mx1.example.net",
    diagnostic="550 5.1.1 <bob@example.net>: user unknown",
    last_attempt=ATTEMPT,
)
CAROL = RecipientStatus(
    final_recipient="carol@example.com",
    action="failed",
    status="5.2.2",
    remote_mta="mx.example.com",
    diagnostic="552 5.2.2 mailbox full",
    last_attempt=ATTEMPT,
)
SLOW = RecipientStatus(
    final_recipient="slow@example.net",
    action="delayed",
    status="4.4.1",
    diagnostic="421 4.4.1 try again later",
    last_attempt=ATTEMPT,
    will_retry_until=RETRY_UNTIL,
)


def make(
    recipients: list[RecipientStatus] | None = None,
    *,
    original: bytes = ORIGINAL,
    ret: str | None = "FULL",
    envid: str | None = None,
    to: str = "alice@example.org",
) -> bytes:
    return build_dsn(
        original=original, recipients=[BOB] if recipients is None else recipients,
        reporting_mta="mx.example.org", to=to, ret=ret, envid=envid, arrival=ARRIVAL, now=NOW,
        message_id="dsn-42",
    )


def parsed(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def raw_parts(raw: bytes) -> list[tuple[bytes, bytes]]:
    """The (header, content) bytes of each top-level part, cut at the boundary as RFC 2046 says."""
    boundary = parsed(raw).get_boundary()
    assert boundary
    delimiter = b"\r\n--" + boundary.encode("ascii")
    body = raw.split(b"\r\n\r\n", 1)[1]
    pieces = body.split(delimiter)
    assert pieces[-1] == b"--\r\n"
    parts = []
    for piece in pieces[1:-1]:
        assert piece.startswith(b"\r\n")
        header, _, content = piece[2:].partition(b"\r\n\r\n")
        parts.append((header + b"\r\n", content))
    return parts


def status_blocks(message: EmailMessage) -> list[EmailMessage]:
    """The stdlib gives message/delivery-status as a list of header blocks, per-message first."""
    report = message.get_payload()[1]
    assert report.get_content_type() == "message/delivery-status"
    return report.get_payload()


def global_blocks(raw: bytes) -> list[dict[str, str]]:
    """message/global-delivery-status read from the raw part: the stdlib makes it one message."""
    _, content = raw_parts(raw)[1]
    blocks = []
    for block in re.split(r"\r\n\r\n", content.decode("utf-8").strip("\r\n")):
        unfolded = re.sub(r"\r\n(?=[ \t])", "", block)
        blocks.append(dict(line.split(": ", 1) for line in unfolded.split("\r\n")))
    return blocks


def stamp(value: str) -> float:
    return email.utils.parsedate_to_datetime(value).timestamp()


class StructureTests(unittest.TestCase):
    def test_full_returns_whole_message_as_rfc822(self) -> None:
        message = parsed(make(ret="FULL"))
        self.assertEqual(message.get_content_type(), "multipart/report")
        self.assertEqual(message.get_param("report-type"), "delivery-status")
        parts = message.get_payload()
        self.assertEqual([p.get_content_type() for p in parts],
                         ["text/plain", "message/delivery-status", "message/rfc822"])
        returned = parts[2].get_payload()[0]
        self.assertEqual(returned["Subject"], "Lunch")
        self.assertIn("Shall we?", returned.get_content())

    def test_hdrs_and_default_return_only_the_header(self) -> None:
        for ret in ("HDRS", None):
            raw = make(ret=ret)
            parts = parsed(raw).get_payload()
            self.assertEqual([p.get_content_type() for p in parts],
                             ["text/plain", "message/delivery-status", "text/rfc822-headers"])
            _, content = raw_parts(raw)[2]
            self.assertEqual(content, ORIGINAL.split(b"\r\n\r\n")[0] + b"\r\n")
            self.assertNotIn(b"Shall we?", raw)

    def test_outer_header(self) -> None:
        message = parsed(make())
        self.assertEqual(message["From"].addresses[0].addr_spec, "MAILER-DAEMON@mx.example.org")
        self.assertEqual(message["From"].addresses[0].display_name, "Mail Delivery System")
        self.assertEqual(message["To"].addresses[0].addr_spec, "alice@example.org")
        self.assertEqual(message["Subject"], "Undelivered Mail Returned to Sender")
        self.assertEqual(stamp(message["Date"]), NOW)
        self.assertEqual(message["Message-ID"], "<dsn-42@mx.example.org>")
        self.assertEqual(message["MIME-Version"], "1.0")
        self.assertEqual(message["Auto-Submitted"], "auto-replied")

    def test_subject_follows_the_worst_action(self) -> None:
        relayed = RecipientStatus("r@example.net", "relayed", "2.0.0", remote_mta="mx.example.net")
        delivered = RecipientStatus("d@example.net", "delivered", "2.0.0")
        cases = [
            ([relayed, delivered], "Successful Mail Delivery Report"),
            ([relayed, SLOW], "Delayed Mail (still being retried)"),
            ([SLOW, BOB, relayed], "Undelivered Mail Returned to Sender"),
        ]
        for recipients, subject in cases:
            self.assertEqual(parsed(make(recipients))["Subject"], subject)

    def test_human_readable_part_explains(self) -> None:
        relayed = RecipientStatus("r@example.net", "relayed", "2.0.0", remote_mta="relay.example.net")
        text = parsed(make([BOB, SLOW, relayed])).get_payload()[0].get_content()
        self.assertIn("could not be delivered", text)
        self.assertIn("<bob@example.net>", text)
        self.assertIn("550 5.1.1 <bob@example.net>: user unknown", text)
        self.assertIn("mx1.example.net", text)
        self.assertIn("not yet been delivered", text)
        self.assertIn("<slow@example.net>", text)
        self.assertIn(f"Retrying until: {dsn._date(RETRY_UNTIL)}", text)
        self.assertIn("<r@example.net>", text)
        self.assertIn("do not return delivery notifications", text)


class FieldTests(unittest.TestCase):
    def test_per_message_fields(self) -> None:
        blocks = status_blocks(parsed(make()))
        self.assertEqual(blocks[0]["Reporting-MTA"], "dns; mx.example.org")
        self.assertEqual(stamp(blocks[0]["Arrival-Date"]), ARRIVAL)
        self.assertIsNone(blocks[0]["Original-Envelope-Id"])
        self.assertIsNone(blocks[0]["Final-Recipient"])

    def test_envelope_id_is_xtext_encoded(self) -> None:
        blocks = status_blocks(parsed(make(envid="QQ314159")))
        self.assertEqual(blocks[0]["Original-Envelope-Id"], "QQ314159")
        raw = make(envid="a+b=c d\r\nBcc: x@evil")
        self.assertEqual(status_blocks(parsed(raw))[0]["Original-Envelope-Id"],
                         "a+2Bb+3Dc+20d+0D+0ABcc:+20x@evil")
        self.assertNotIn(b"\r\nBcc:", raw)

    def test_per_recipient_fields(self) -> None:
        block = status_blocks(parsed(make([BOB])))[1]
        self.assertEqual(block["Original-Recipient"], "rfc822;Bob@Example.NET")
        self.assertEqual(block["Final-Recipient"], "rfc822; bob@example.net")
        self.assertEqual(block["Action"], "failed")
        self.assertEqual(block["Status"], "5.1.1")
        self.assertEqual(block["Remote-MTA"], "dns; mx1.example.net")
        self.assertEqual(block["Diagnostic-Code"], "smtp; 550 5.1.1 <bob@example.net>: user unknown")
        self.assertEqual(stamp(block["Last-Attempt-Date"]), ATTEMPT)
        self.assertIsNone(block["Will-Retry-Until"])

    def test_optional_fields_absent_when_not_given(self) -> None:
        bare = RecipientStatus("dave@example.net", "failed", "5.4.4")
        block = status_blocks(parsed(make([bare])))[1]
        self.assertEqual(block["Final-Recipient"], "rfc822; dave@example.net")
        for name in ("Original-Recipient", "Remote-MTA", "Diagnostic-Code", "Last-Attempt-Date",
                     "Will-Retry-Until"):
            self.assertIsNone(block[name], name)

    def test_several_recipients(self) -> None:
        blocks = status_blocks(parsed(make([BOB, CAROL, SLOW])))
        self.assertEqual(len(blocks), 4)
        self.assertEqual([b["Final-Recipient"] for b in blocks[1:]],
                         ["rfc822; bob@example.net", "rfc822; carol@example.com", "rfc822; slow@example.net"])
        self.assertEqual([b["Action"] for b in blocks[1:]], ["failed", "failed", "delayed"])
        self.assertEqual([b["Status"] for b in blocks[1:]], ["5.1.1", "5.2.2", "4.4.1"])
        self.assertEqual(blocks[2]["Diagnostic-Code"], "smtp; 552 5.2.2 mailbox full")
        self.assertIsNone(blocks[2]["Original-Recipient"])
        self.assertEqual(blocks[1]["Original-Recipient"], "rfc822;Bob@Example.NET")

    def test_delayed_report(self) -> None:
        message = parsed(make([SLOW]))
        self.assertEqual(message["Subject"], "Delayed Mail (still being retried)")
        block = status_blocks(message)[1]
        self.assertEqual(block["Action"], "delayed")
        self.assertEqual(block["Status"], "4.4.1")
        self.assertEqual(stamp(block["Will-Retry-Until"]), RETRY_UNTIL)
        # Will-Retry-Until means nothing once the system has given up.
        gave_up = RecipientStatus("x@example.net", "failed", "4.4.7", will_retry_until=RETRY_UNTIL)
        self.assertIsNone(status_blocks(parsed(make([gave_up])))[1]["Will-Retry-Until"])

    def test_long_diagnostic_is_folded_not_lost(self) -> None:
        reply = "550 5.7.1 " + " ".join(f"word{i}" for i in range(150))
        raw = make([RecipientStatus("bob@example.net", "failed", "5.7.1", diagnostic=reply)])
        self.assertEqual(status_blocks(parsed(raw))[1]["Diagnostic-Code"], f"smtp; {reply}")
        self.assertIn(b"\r\n word", raw)

    def test_invalid_arguments(self) -> None:
        with self.assertRaises(ValueError):
            make(to="")
        with self.assertRaises(ValueError):
            make([RecipientStatus("bob@example.net", "bounced", "5.1.1")])
        with self.assertRaises(ValueError):
            make([RecipientStatus("bob@example.net", "failed", "550")])
        with self.assertRaises(ValueError):
            make([])


class GlobalTests(unittest.TestCase):
    UTF8 = RecipientStatus("用户@example.net", "failed", "5.1.1", original_recipient="utf-8;用户@example.net",
                           remote_mta="mx1.example.net", diagnostic="550 5.1.1 用户不存在")

    def test_utf8_recipient_gives_global_report(self) -> None:
        raw = make([self.UTF8, BOB], ret="HDRS", envid="E1")
        message = parsed(raw)
        self.assertEqual(message.get_param("report-type"), "global-delivery-status")
        self.assertEqual([p.get_content_type() for p in message.get_payload()],
                         ["text/plain", "message/global-delivery-status", "message/global-headers"])
        header, _ = raw_parts(raw)[1]
        self.assertIn(b"Content-Transfer-Encoding: 8bit\r\n", header)
        blocks = global_blocks(raw)
        self.assertEqual(blocks[0]["Reporting-MTA"], "dns; mx.example.org")
        self.assertEqual(blocks[0]["Original-Envelope-Id"], "E1")
        self.assertEqual(blocks[1]["Final-Recipient"], "utf-8; 用户@example.net")
        self.assertEqual(blocks[1]["Original-Recipient"], "utf-8;用户@example.net")
        self.assertEqual(blocks[1]["Diagnostic-Code"], "smtp; 550 5.1.1 用户不存在")
        self.assertEqual(blocks[1]["Action"], "failed")
        self.assertEqual(blocks[2]["Final-Recipient"], "rfc822; bob@example.net")
        self.assertIn("<用户@example.net>", message.get_payload()[0].get_content())

    def test_utf8_rfc822_orcpt_becomes_utf8_type_with_escapes(self) -> None:
        recipient = RecipientStatus("a+b@bücher.example", "failed", "5.1.1",
                                    original_recipient="rfc822;a+b@bücher.example")
        blocks = global_blocks(make([recipient]))
        self.assertEqual(blocks[1]["Final-Recipient"], "utf-8; a\\x{2B}b@bücher.example")
        self.assertEqual(blocks[1]["Original-Recipient"], "utf-8;a\\x{2B}b@bücher.example")

    def test_utf8_header_full_gives_message_global(self) -> None:
        original = "From: jürgen@example.org\r\nSubject: Grüße\r\n\r\nHallo\r\n".encode()
        raw = make([BOB], original=original, ret="FULL")
        message = parsed(raw)
        self.assertEqual([p.get_content_type() for p in message.get_payload()],
                         ["text/plain", "message/global-delivery-status", "message/global"])
        self.assertEqual(raw_parts(raw)[2][1], original)

    def test_ascii_report_stays_ascii(self) -> None:
        raw = make([RecipientStatus("bob@example.net", "failed", "5.1.1", diagnostic="550 nö")])
        self.assertTrue(raw.isascii())
        self.assertEqual(parsed(raw).get_payload()[1].get_content_type(), "message/delivery-status")
        self.assertEqual(status_blocks(parsed(raw))[1]["Diagnostic-Code"], "smtp; 550 n?")


class HygieneTests(unittest.TestCase):
    def variants(self) -> list[bytes]:
        long_line = b"X-Long: " + b"y" * 1500 + b"\r\n"
        huge = RecipientStatus("bob@example.net", "failed", "5.0.0", remote_mta="mx.example.net",
                               diagnostic="550 " + "z" * 3000 + " " + "ü" * 700)
        return [
            make([BOB, CAROL, SLOW], ret="FULL", envid="x" * 1200),
            make([huge], ret="HDRS", original=long_line + ORIGINAL),
            make([huge, GlobalTests.UTF8], ret="HDRS", original=long_line + ORIGINAL),
            make([BOB], ret="FULL", original=long_line + ORIGINAL),
            make([BOB], ret="HDRS", original=b"Subject: no separator, no newline"),
            make([BOB], ret="FULL", original=b"Subject: bare\nnewlines\r\n\nbody\n"),
        ]

    def test_crlf_only_and_line_length(self) -> None:
        for raw in self.variants():
            self.assertIsNone(re.search(rb"\r(?!\n)|(?<!\r)\n", raw))
            self.assertTrue(raw.endswith(b"\r\n"))
            longest = max(len(line) for line in raw.split(b"\r\n"))
            self.assertLessEqual(longest, 998)

    def test_full_unsafe_original_falls_back_to_header(self) -> None:
        for original in (b"Subject: x\r\n\r\n" + b"a" * 1200 + b"\r\n", b"Subject: x\n\nbare LF\n"):
            raw = make([BOB], ret="FULL", original=original)
            self.assertEqual(parsed(raw).get_payload()[2].get_content_type(), "text/rfc822-headers")
            self.assertEqual(raw_parts(raw)[2][1], b"Subject: x\r\n")

    def test_crlf_in_diagnostic_does_not_make_a_header(self) -> None:
        evil = RecipientStatus("bob@example.net\r\nBcc: y@evil", "failed", "5.1.1",
                               original_recipient="rfc822;bob@example.net\r\nBcc: z@evil",
                               remote_mta="mx.example.net\r\nBcc: w@evil",
                               diagnostic="550 no such user\r\nBcc: x@evil\r\n\r\nBody: injected")
        raw = make([evil], to="alice@example.org\r\nBcc: v@evil")
        message = parsed(raw)
        self.assertIsNone(message["Bcc"])
        self.assertIn(b"\r\nTo: <alice@example.org Bcc: v@evil>\r\n", raw)
        blocks = status_blocks(message)
        self.assertEqual(len(blocks), 2)
        for block in blocks:
            self.assertIsNone(block["Bcc"])
            self.assertIsNone(block["Body"])
        self.assertEqual(blocks[1]["Diagnostic-Code"],
                         "smtp; 550 no such user Bcc: x@evil Body: injected")
        self.assertIsNone(re.search(rb"(?m)^(Bcc|Body):", raw))

    def test_full_original_is_byte_identical(self) -> None:
        originals = [
            ORIGINAL,
            ORIGINAL + b"no final newline",
            b"Subject: 8bit\r\nContent-Type: text/plain; charset=latin-1\r\n\r\ncaf\xe9\r\n\r\n\r\n",
            b"Subject: boundary look-alike\r\n\r\n--=_dsn_0123\r\n--\r\n",
        ]
        for original in originals:
            raw = make([BOB], original=original, ret="FULL")
            header, content = raw_parts(raw)[2]
            self.assertEqual(content, original)
            self.assertIn(b"Content-Type: message/rfc822\r\n", header)

    def test_headers_without_separator_are_all_header(self) -> None:
        for original, expected in ((b"From: a@example.org\r\nSubject: x\r\n", None),
                                   (b"Subject: x", b"Subject: x\r\n")):
            raw = make([BOB], original=original, ret="HDRS")
            self.assertEqual(raw_parts(raw)[2][1], expected or original)

    def test_boundary_is_random_and_avoids_content(self) -> None:
        first, second = parsed(make()).get_boundary(), parsed(make()).get_boundary()
        self.assertNotEqual(first, second)
        tokens = iter(["deadbeef", "feedface"])
        self.patch(dsn.secrets, "token_hex", lambda _: next(tokens))
        original = ORIGINAL + b"--=_dsn_deadbeef\r\n"
        raw = make([BOB], original=original, ret="FULL")
        self.assertEqual(parsed(raw).get_boundary(), "=_dsn_feedface")
        self.assertEqual(raw_parts(raw)[2][1], original)
