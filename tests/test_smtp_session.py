"""The SMTP server state machine, driven line by line without sockets."""

from __future__ import annotations

import base64

from twisted.trial import unittest

from smtpeter.ingress.smtp.data import BARE_NEWLINE
from smtpeter.ingress.smtp.server_session import (
    Authenticate,
    BeginData,
    Close,
    Deliver,
    ServerSession,
    SessionPolicy,
    StartTLS,
)

POLICY = SessionPolicy(hostname="mx.test", max_message_size=1000, max_recipients=2, max_errors=5)


def text(outputs: list) -> str:
    return "".join(o.decode() for o in outputs if isinstance(o, bytes))


class SessionTests(unittest.TestCase):
    def session(self, tls: bool = False, trusted: bool = False, *, ehlo: bool = False,
                **policy: object) -> ServerSession:
        """A new session; with ``ehlo``, one past "EHLO c.test"."""
        chosen = SessionPolicy(**{**POLICY.__dict__, **policy}) if policy else POLICY
        session = ServerSession(chosen, "192.0.2.1", tls, trusted)
        if ehlo:
            session.line(b"EHLO c.test")
        return session

    def lines(self, session: ServerSession, *lines: bytes) -> list:
        outputs: list = []
        for line in lines:
            outputs += session.line(line)
        return outputs

    def logged_in(self, **kwargs: object) -> ServerSession:
        session = self.session(tls=True, ehlo=True, **kwargs)
        outputs = session.line(b"AUTH PLAIN " + base64.b64encode(b"\0u\0p"))
        self.assertIsInstance(outputs[-1], Authenticate)
        self.assertEqual(text(session.authenticated("the-login")),
                         "235 2.7.0 Authentication successful\r\n")
        return session

    def test_ehlo_offers_starttls_then_auth(self) -> None:
        session = self.session()
        reply = text(session.line(b"EHLO client.test"))
        self.assertTrue(reply.startswith("250-mx.test Hello client.test [192.0.2.1]\r\n"))
        for keyword in ("PIPELINING", "SIZE 1000", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES",
                        "DSN", "STARTTLS"):
            self.assertIn(keyword + "\r\n", reply)
        self.assertNotIn("AUTH", reply)
        outputs = session.line(b"STARTTLS")
        self.assertEqual(text(outputs), "220 2.0.0 Ready to start TLS\r\n")
        self.assertIsInstance(outputs[-1], StartTLS)
        reply = text(session.line(b"EHLO client.test"))
        self.assertIn("250 AUTH PLAIN LOGIN\r\n", reply)
        self.assertNotIn("STARTTLS", reply)

    def test_auth_before_tls_is_refused(self) -> None:
        session = self.session(ehlo=True)
        reply = text(session.line(b"AUTH PLAIN " + base64.b64encode(b"\0u\0p")))
        self.assertTrue(reply.startswith("538 5.7.11"), reply)

    def test_starttls_forgets_envelope_and_login(self) -> None:
        session = self.session(trusted=True, ehlo=True)
        self.lines(session, b"MAIL FROM:<a@example.com>")
        session.line(b"STARTTLS")
        self.assertTrue(text(session.line(b"RCPT TO:<b@example.net>")).startswith("503 5.5.1"))
        self.assertTrue(text(session.line(b"MAIL FROM:<a@example.com>")).startswith("503 5.5.1"))
        self.assertTrue(text(session.line(b"STARTTLS")).startswith("503"))

    def test_auth_argument_errors_get_501_not_a_crash(self) -> None:
        session = self.session(tls=True, ehlo=True)
        self.assertTrue(text(session.line(b"AUTH")).startswith("501 5.5.4"))
        malformed = b"AUTH PLAIN " + base64.b64encode(b"u\0p")
        self.assertTrue(text(session.line(malformed)).startswith("501 5.5.2"))
        self.assertTrue(text(session.line(b"AUTH PLAIN !!!")).startswith("501 5.5.2"))
        self.assertTrue(text(session.line(b"AUTH CRAM-MD5")).startswith("504 5.5.4"))
        self.assertEqual(text(session.line(b"AUTH PLAIN")), "334 \r\n")
        self.assertTrue(text(session.line(b"*")).startswith("501 5.7.0"))
        self.assertTrue(text(session.line(b"NOOP")).startswith("250"))

    def test_auth_login_exchange(self) -> None:
        session = self.session(tls=True, ehlo=True)
        self.assertEqual(text(session.line(b"AUTH LOGIN")), "334 VXNlcm5hbWU6\r\n")
        self.assertEqual(text(session.line(base64.b64encode(b"user"))), "334 UGFzc3dvcmQ6\r\n")
        (request,) = session.line(base64.b64encode(b"secret"))
        self.assertEqual((request.credentials.username, request.credentials.password), (b"user", b"secret"))
        self.assertTrue(text(session.authenticated(None)).startswith("535 5.7.8"))
        # With an initial response, the next challenge is the password.
        initial = b"AUTH LOGIN " + base64.b64encode(b"user")
        self.assertEqual(text(session.line(initial)), "334 UGFzc3dvcmQ6\r\n")

    def test_plain_with_foreign_authzid_is_refused(self) -> None:
        session = self.session(tls=True, ehlo=True)
        reply = text(session.line(b"AUTH PLAIN " + base64.b64encode(b"admin\0u\0p")))
        self.assertTrue(reply.startswith("535"), reply)

    def test_relay_needs_auth_or_trusted_network(self) -> None:
        session = self.session(tls=True, ehlo=True)
        self.lines(session, b"MAIL FROM:<a@example.com>")
        self.assertTrue(text(session.line(b"RCPT TO:<b@example.net>")).startswith("530 5.7.0"))
        trusted = self.session(trusted=True)
        self.lines(trusted, b"HELO c.test", b"MAIL FROM:<a@example.com>")
        self.assertEqual(text(trusted.line(b"RCPT TO:<b@example.net>")), "250 2.1.5 Recipient OK\r\n")

    def test_transaction_with_dsn_parameters(self) -> None:
        session = self.logged_in()
        outputs = self.lines(
            session,
            b"MAIL FROM:<a@example.com> RET=HDRS ENVID=QQ+2B1 BODY=8BITMIME SIZE=500",
            b"RCPT TO:<b@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bx@example.net",
            b"DATA",
        )
        self.assertEqual(text(outputs), "250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n"
                                        "354 End data with <CR><LF>.<CR><LF>\r\n")
        self.assertIsInstance(outputs[-1], BeginData)
        (deliver,) = session.data_received(b"Subject: x\r\n\r\nhi\r\n")
        self.assertIsInstance(deliver, Deliver)
        envelope = deliver.envelope
        self.assertEqual((envelope.ret, envelope.envid, envelope.body), ("HDRS", "QQ+1", "8BITMIME"))
        self.assertEqual((envelope.recipients[0].notify, envelope.recipients[0].orcpt),
                         ("SUCCESS,FAILURE", "rfc822;b+x@example.net"))
        self.assertEqual(deliver.client.login, "the-login")
        self.assertEqual(text(session.stored(b"250 2.0.0 ok\r\n")), "250 2.0.0 ok\r\n")
        self.assertTrue(text(session.line(b"RCPT TO:<c@example.net>")).startswith("503"))

    def test_a_recipient_given_twice_is_taken_once(self) -> None:
        session = self.logged_in()
        outputs = self.lines(session, b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.net> NOTIFY=NEVER",
                             b"RCPT TO:<b@EXAMPLE.net>", b"RCPT TO:<c@example.net>", b"DATA")
        self.assertIn("250 2.1.5 Recipient OK (already given)", text(outputs))
        (deliver,) = session.data_received(b"Subject: x\r\n\r\nhi\r\n")
        self.assertEqual([(r.address, r.notify) for r in deliver.envelope.recipients],
                         [("b@example.net", "NEVER"), ("c@example.net", None)])

    def test_parameter_errors(self) -> None:
        session = self.logged_in()
        for line, code in ((b"MAIL FROM:<a@example.com> SIZE=1001", "552 5.3.4"),
                           (b"MAIL FROM:<a@example.com> FOO=1", "555 5.5.4"),
                           (b"MAIL FROM:<a@example.com> BODY=BINARYMIME", "501 5.5.4"),
                           (b"MAIL FROM:<jos\xc3\xa9@example.com>", "553 5.6.7")):
            self.assertTrue(text(session.line(line)).startswith(code), line)
        helo = self.session(trusted=True)
        self.lines(helo, b"HELO c.test")
        self.assertTrue(text(helo.line(b"MAIL FROM:<a@example.com> SIZE=10")).startswith("555"))

    def test_smtputf8_addresses(self) -> None:
        session = self.logged_in()
        self.assertTrue(text(session.line("MAIL FROM:<josé@exämple.de> SMTPUTF8".encode())).startswith("250"))
        self.assertTrue(text(session.line("RCPT TO:<用户@例子.广告>".encode())).startswith("250"))

    def test_recipient_limit_and_empty_data(self) -> None:
        session = self.logged_in()
        session.line(b"MAIL FROM:<>")
        self.assertTrue(text(session.line(b"DATA")).startswith("554 5.5.1"))
        self.lines(session, b"RCPT TO:<a@x.test>", b"RCPT TO:<b@x.test>")
        self.assertTrue(text(session.line(b"RCPT TO:<c@x.test>")).startswith("452 4.5.3"))

    def test_bad_data_resets_the_transaction(self) -> None:
        session = self.logged_in()
        self.lines(session, b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@x.test>", b"DATA")
        self.assertTrue(text(session.data_received(BARE_NEWLINE)).startswith("550 5.5.2"))
        self.assertTrue(text(session.line(b"RCPT TO:<b@x.test>")).startswith("503"))

    def test_bare_line_endings_and_nul_in_commands_close(self) -> None:
        for line in (b"MAIL FROM:<a\r@example.com>", b"RSET\nMAIL FROM:<e@x>", b"NOOP\x00"):
            session = self.session(trusted=True, ehlo=True)
            outputs = session.line(line)
            self.assertTrue(text(outputs).startswith("500 5.5.2"))
            self.assertIsInstance(outputs[-1], Close)
            self.assertEqual(session.line(b"NOOP"), [])

    def test_an_over_long_line_is_answered_once(self) -> None:
        """The adapter may report the same long line again as more of it arrives."""
        session = self.session()
        outputs = session.line_too_long()
        self.assertEqual(text(outputs), "500 5.5.2 Error: line too long\r\n")
        self.assertIsInstance(outputs[-1], Close)
        self.assertEqual(session.line_too_long(), [])

    def test_too_many_errors_hangs_up(self) -> None:
        session = self.session()
        for _ in range(5):
            self.assertNotIsInstance(session.line(b"BOGUS")[-1], Close)
        outputs = session.line(b"BOGUS")
        self.assertIn("421 4.7.0 Too many errors", text(outputs))
        self.assertIsInstance(outputs[-1], Close)

    def test_junk_commands_are_limited(self) -> None:
        session = self.session()
        outputs: list = []
        for _ in range(200):
            outputs = session.line(b"NOOP")
            if outputs and isinstance(outputs[-1], Close):
                break
        self.assertIn("421 4.7.0", text(outputs))
        self.assertTrue(session.closed)

    def test_long_auth_initial_response_and_nul_in_login(self) -> None:
        session = self.session(tls=True, ehlo=True)
        (request,) = session.line(b"AUTH PLAIN " + base64.b64encode(b"\0u\0" + b"p" * 4000))
        self.assertIsInstance(request, Authenticate)
        session = self.session(tls=True, ehlo=True)
        session.line(b"AUTH LOGIN")
        session.line(base64.b64encode(b"us\0er"))
        self.assertTrue(text(session.line(base64.b64encode(b"pw"))).startswith("501 5.5.2"))

    def test_other_commands(self) -> None:
        session = self.session()
        self.assertTrue(text(session.line(b"MAIL FROM:<a@b.c>")).startswith("503"))
        self.assertTrue(text(session.line(b"HELO")).startswith("501"))
        self.assertTrue(text(session.line(b"VRFY x")).startswith("252"))
        self.assertTrue(text(session.line(b"RSET x")).startswith("501"))
        self.assertTrue(text(session.line(b"NOOP")).startswith("250 2.0.0"))
        self.assertTrue(text(session.line(b"x" * 3000)).startswith("500 5.5.2"))
        session = self.session()
        outputs = session.line(b"BDAT 100 LAST")
        self.assertTrue(text(outputs).startswith("502"))
        self.assertIsInstance(outputs[-1], Close)
        self.assertEqual(text(self.session().line(b"QUIT")), "221 2.0.0 Bye\r\n")
