"""The outbound SMTP conversation without sockets: reply lines in, commands and results out."""

from __future__ import annotations

from twisted.trial import unittest

from smtpeter.attempt import RecipientResult
from smtpeter.config import Timeouts
from smtpeter.delivery.client_session import (
    Abort,
    ClientSession,
    Close,
    Failed,
    Finished,
    Output,
    Ready,
    SessionError,
    StartTLS,
    Transaction,
)
from smtpeter.envelope import Envelope, Recipient

# Every step its own timeout, so a test can tell which one the session waits for.
TIMEOUTS = Timeouts(greeting=1, ehlo=2, starttls=3, mail=4, rcpt=5, data=6, data_done=7, rset=8, quit=9)
MESSAGE = b"From: <a@out.test>\r\nSubject: hi\r\n\r\nHello.\r\n"
ESMTP = (b"250-mx.test Hello", b"250-PIPELINING", b"250-SIZE 10000", b"250-8BITMIME", b"250-DSN",
         b"250 SMTPUTF8")


def tx(*recipients: str, message: bytes = MESSAGE, **envelope: object) -> Transaction:
    return Transaction(Envelope("a@out.test", tuple(Recipient(r) for r in recipients), **envelope), message)


def sent(outputs: list[Output]) -> bytes:
    return b"".join(output for output in outputs if isinstance(output, bytes))


def events(outputs: list[Output]) -> list[type]:
    return [type(output) for output in outputs if not isinstance(output, bytes)]


def error(outputs: list[Output]) -> SessionError:
    (failed,) = [output for output in outputs if isinstance(output, Failed)]
    return failed.error


def results(outputs: list[Output]) -> list[RecipientResult]:
    (finished,) = [output for output in outputs if isinstance(output, Finished)]
    return finished.results


class Conversation:
    """A ClientSession and what it said, fed reply lines one by one."""

    def __init__(self, tls: str = "disabled") -> None:
        self.session = ClientSession("out.test", TIMEOUTS, tls)

    def replies(self, *lines: bytes) -> list[Output]:
        outputs: list[Output] = []
        for line in lines:
            outputs += self.session.line(line)
        return outputs

    def ready(self, *ehlo: bytes) -> None:
        """Greeting and EHLO with these lines (an ESMTP server with everything by default)."""
        assert sent(self.replies(b"220 mx.test ESMTP")) == b"EHLO out.test\r\n"
        assert events(self.replies(*(ehlo or ESMTP))) == [Ready]

    @property
    def waiting_for(self) -> tuple[str, float] | None:
        step = self.session.expecting
        return None if step is None else (step.state, step.timeout)


class HandshakeTests(unittest.TestCase):
    def test_greeting_then_ehlo_with_capabilities(self) -> None:
        c = Conversation()
        self.assertEqual(c.waiting_for, ("greeting", 1))
        self.assertEqual(c.replies(b"220 mx.test ESMTP"), [b"EHLO out.test\r\n"])
        self.assertEqual(c.waiting_for, ("ehlo", 2))
        self.assertEqual(c.replies(*ESMTP[:-1]), [])  # a multi-line reply is one reply, at its last line
        self.assertEqual(events(c.replies(ESMTP[-1])), [Ready])
        caps = c.session.capabilities
        self.assertTrue(caps.esmtp and caps.pipelining and caps.eightbitmime and caps.dsn and caps.smtputf8)
        self.assertEqual(caps.size, 10000)
        self.assertIsNone(c.waiting_for)

    def test_a_greeting_other_than_220_fails_the_session(self) -> None:
        c = Conversation()
        outputs = c.replies(b"554 5.7.1 blocked using zen.spamhaus.org")
        exc = error(outputs)
        self.assertEqual((exc.state, exc.reply.code), ("greeting", 554))
        self.assertEqual(sent(outputs), b"")
        self.assertFalse(c.session.usable)

    def test_helo_when_ehlo_is_refused(self) -> None:
        c = Conversation()
        c.replies(b"220 old.test")
        self.assertEqual(sent(c.replies(b"502 5.5.1 EHLO not implemented")), b"HELO out.test\r\n")
        self.assertEqual(c.waiting_for, ("helo", 2))
        self.assertEqual(events(c.replies(b"250 old.test")), [Ready])
        self.assertFalse(c.session.capabilities.esmtp)

    def test_a_refused_helo_and_a_421_to_ehlo_fail(self) -> None:
        c = Conversation()
        c.replies(b"220 old.test", b"500 no")
        self.assertEqual(error(c.replies(b"550 go away")).state, "helo")
        c = Conversation()
        c.replies(b"220 busy.test")
        outputs = c.replies(b"421 4.3.2 closing")
        self.assertEqual((error(outputs).state, sent(outputs)), ("ehlo", b""))

    def test_opportunistic_starttls(self) -> None:
        c = Conversation("opportunistic")
        c.replies(b"220 mx.test")
        self.assertEqual(c.replies(b"250-mx.test", b"250 STARTTLS"), [b"STARTTLS\r\n"])
        self.assertEqual(c.waiting_for, ("starttls", 3))
        outputs = c.replies(b"220 2.0.0 go ahead")
        self.assertEqual(events(outputs), [StartTLS])
        self.assertEqual(sent(outputs), b"EHLO out.test\r\n")  # again, under TLS
        self.assertEqual(events(c.replies(b"250-mx.test", b"250 PIPELINING")), [Ready])
        self.assertTrue(c.session.tls and c.session.capabilities.pipelining)

    def test_opportunistic_goes_on_in_plaintext_when_tls_is_refused_or_not_offered(self) -> None:
        c = Conversation("opportunistic")
        c.replies(b"220 mx.test", b"250-mx.test", b"250 STARTTLS")
        self.assertEqual(events(c.replies(b"454 4.7.0 TLS not available")), [Ready])
        self.assertFalse(c.session.tls)
        c = Conversation("opportunistic")
        c.ready(b"250 mx.test")
        self.assertFalse(c.session.tls)

    def test_a_421_to_starttls_ends_the_session_even_when_tls_is_optional(self) -> None:
        c = Conversation("opportunistic")
        c.replies(b"220 mx.test", b"250-mx.test", b"250 STARTTLS")
        exc = error(c.replies(b"421 4.7.0 Too many connections, closing"))
        self.assertEqual((exc.state, exc.reply.code), ("starttls", 421))  # its text reaches the backoff rules

    def test_a_3xx_to_ehlo_is_no_greeting(self) -> None:
        c = Conversation()
        c.replies(b"220 odd.test")
        self.assertEqual(sent(c.replies(b"354 what?")), b"HELO out.test\r\n")

    def test_required_tls(self) -> None:
        c = Conversation("required")
        c.replies(b"220 mx.test")
        exc = error(c.replies(b"250 mx.test"))
        self.assertEqual((exc.state, exc.description),
                         ("starttls", "TLS is required for this destination but not offered"))
        c = Conversation("required")
        c.replies(b"220 mx.test", b"250-mx.test", b"250 STARTTLS")
        exc = error(c.replies(b"454 4.7.0 TLS not available"))
        self.assertEqual((exc.state, exc.reply.code), ("starttls", 454))

    def test_disabled_tls_ignores_the_offer(self) -> None:
        c = Conversation("disabled")
        c.ready(b"250-mx.test", b"250 STARTTLS")
        self.assertFalse(c.session.tls)

    def test_whatever_fails_after_starttls_is_a_failed_tls_handshake(self) -> None:
        # Destination then tries an opportunistic host in plaintext for a while.
        c = Conversation("opportunistic")
        c.replies(b"220 mx.test", b"250-mx.test", b"250 STARTTLS", b"220 go ahead")
        exc = error(c.session.connection_lost("Connection was closed cleanly."))
        self.assertEqual((exc.state, exc.description), (
            "starttls", "TLS handshake failed: connection lost during ehlo: Connection was closed cleanly."))

    def test_replies_pipelined_behind_the_220_to_starttls_are_not_carried_into_tls(self) -> None:
        c = Conversation("opportunistic")
        c.replies(b"220 mx.test", b"250-mx.test", b"250 STARTTLS")
        c.replies(b"220-go ahead")  # a multi-line 220 cut off by the handshake...
        self.assertEqual(events(c.replies(b"220 go ahead")), [StartTLS])
        # ... and the parser starts afresh under TLS: a 250 here is the EHLO reply.
        self.assertEqual(events(c.replies(b"250 mx.test")), [Ready])


class TransactionTests(unittest.TestCase):
    def test_pipelined_transaction_in_one_write(self) -> None:
        c = Conversation()
        c.ready()
        outputs = c.session.transaction(tx("b@dest.test", "c@dest.test"))
        self.assertEqual(outputs, [
            f"MAIL FROM:<a@out.test> SIZE={len(MESSAGE)}\r\n".encode()
            + b"RCPT TO:<b@dest.test>\r\nRCPT TO:<c@dest.test>\r\nDATA\r\n"])
        self.assertEqual(c.waiting_for, ("mailfrom", 4))
        self.assertEqual(c.replies(b"250 2.1.0 ok"), [])
        self.assertEqual(c.waiting_for, ("rcptto", 5))
        c.replies(b"250 2.1.5 ok", b"550 5.1.1 <c@dest.test>: no such user")
        self.assertEqual(c.waiting_for, ("data", 6))
        self.assertEqual(c.replies(b"354 go ahead"), [MESSAGE + b".\r\n"])
        self.assertEqual(c.waiting_for, ("message", 7 + len(MESSAGE + b".\r\n") / 16384))
        delivered, refused = results(c.replies(b"250 2.0.0 queued as 1"))
        self.assertEqual((delivered.address, delivered.state, delivered.code, delivered.status,
                          delivered.delivered), ("b@dest.test", "message", 250, "2.0.0", True))
        self.assertEqual((refused.address, refused.state, refused.status, refused.permanent,
                          refused.description),
                         ("c@dest.test", "rcptto", "5.1.1", True, "550 5.1.1 <c@dest.test>: no such user"))
        self.assertIsNone(c.waiting_for)
        # The next transaction on this session starts with RSET, in the same write.
        self.assertTrue(sent(c.session.transaction(tx("d@dest.test"))).startswith(b"RSET\r\nMAIL FROM:"))
        self.assertEqual(c.waiting_for, ("rset", 8))

    def test_without_pipelining_one_command_per_reply(self) -> None:
        c = Conversation()
        c.ready(b"250 mx.test")
        self.assertEqual(c.session.transaction(tx("b@dest.test", "c@dest.test")),
                         [b"MAIL FROM:<a@out.test>\r\n"])
        self.assertEqual(c.replies(b"250 ok"), [b"RCPT TO:<b@dest.test>\r\n"])
        self.assertEqual(c.replies(b"450 4.2.0 greylisted"), [b"RCPT TO:<c@dest.test>\r\n"])
        self.assertEqual(c.replies(b"250 ok"), [b"DATA\r\n"])
        self.assertEqual(c.replies(b"354 go ahead"), [MESSAGE + b".\r\n"])
        greylisted, delivered = results(c.replies(b"250 ok"))
        self.assertEqual((greylisted.state, greylisted.code, greylisted.permanent), ("rcptto", 450, False))
        self.assertTrue(delivered.delivered)
        self.assertEqual(c.session.transaction(tx("d@dest.test")), [b"RSET\r\n"])
        self.assertEqual(c.replies(b"250 ok"), [b"MAIL FROM:<a@out.test>\r\n"])

    def test_a_refused_mail_from_is_every_recipients_result(self) -> None:
        c = Conversation()
        c.ready(b"250 mx.test")
        c.session.transaction(tx("b@dest.test", "c@dest.test"))
        outputs = c.replies(b"553 5.7.1 sender rejected")
        self.assertEqual(sent(outputs), b"")  # no RCPT after a refused MAIL
        self.assertEqual({(r.state, r.status) for r in results(outputs)}, {("mailfrom", "5.7.1")})

    def test_a_server_that_says_354_anyway_gets_an_empty_message(self) -> None:
        c = Conversation()
        c.ready()
        c.session.transaction(tx("b@dest.test"))
        c.replies(b"550 5.7.1 sender rejected", b"503 5.5.1 no sender")
        self.assertEqual(c.replies(b"354 go ahead"), [b".\r\n"])
        self.assertEqual([r.state for r in results(c.replies(b"554 5.5.1 no valid recipients"))],
                         ["mailfrom"])

    def test_nobody_accepted_means_no_message(self) -> None:
        c = Conversation()
        c.ready()
        c.session.transaction(tx("b@dest.test"))
        c.replies(b"250 ok", b"550 5.1.1 unknown")
        outputs = c.replies(b"554 5.5.1 no valid recipients")
        self.assertEqual(sent(outputs), b"")
        self.assertEqual([(r.state, r.code) for r in results(outputs)], [("rcptto", 550)])

    def test_a_refused_data_is_the_accepted_recipients_result(self) -> None:
        c = Conversation()
        c.ready()
        c.session.transaction(tx("b@dest.test", "c@dest.test"))
        outputs = c.replies(b"250 ok", b"250 ok", b"550 5.1.1 unknown", b"451 4.3.0 try later")
        self.assertEqual(sent(outputs), b"")
        self.assertEqual([(r.state, r.code) for r in results(outputs)], [("data", 451), ("rcptto", 550)])

    def test_a_421_mid_transaction_ends_the_session_with_that_reply(self) -> None:
        c = Conversation()
        c.ready()
        c.session.transaction(tx("b@dest.test", "c@dest.test"))
        exc = error(c.replies(b"250 ok", b"421 4.7.0 [TSS04] too many messages"))
        self.assertEqual((exc.state, exc.reply.code, exc.description),
                         ("rcptto", 421, "421 4.7.0 [TSS04] too many messages"))
        self.assertFalse(c.session.usable)
        self.assertIsNone(c.waiting_for)  # the replies to what else was pipelined are not awaited
        self.assertEqual(events(c.session.quit()), [Close])  # no QUIT to a server that is closing

    def test_a_421_after_the_message_is_the_sessions_result(self) -> None:
        c = Conversation()
        c.ready()
        c.session.transaction(tx("b@dest.test"))
        c.replies(b"250 ok", b"250 ok", b"354 go")
        self.assertEqual(error(c.replies(b"421 4.4.2 timeout")).state, "message")

    def test_too_many_recipients_are_results_of_their_own(self) -> None:
        # Destination sends them again in the next transaction.
        c = Conversation()
        c.ready()
        c.session.transaction(tx("b@dest.test", "c@dest.test"))
        c.replies(b"250 ok", b"250 ok", b"452 4.5.3 Too many recipients", b"354 go")
        delivered, later = results(c.replies(b"250 ok"))
        self.assertTrue(delivered.delivered)
        self.assertEqual((later.state, later.code, later.status, later.permanent),
                         ("rcptto", 452, "4.5.3", False))

    def test_a_refused_rset_fails_the_session_before_the_transaction(self) -> None:
        c = Conversation()
        c.ready()
        c.session.transaction(tx("b@dest.test"))
        c.replies(b"250 ok", b"250 ok", b"354 go", b"250 ok")
        c.session.transaction(tx("c@dest.test"))
        exc = error(c.replies(b"421 4.3.2 shutting down"))
        self.assertEqual(exc.state, "rset")
        self.assertFalse(c.session.usable)

    def test_a_transaction_on_a_session_that_ended_goes_to_a_fresh_one(self) -> None:
        c = Conversation()
        c.ready()
        c.session.transaction(tx("b@dest.test"))
        c.replies(b"250 ok", b"250 ok", b"354 go", b"250 ok")
        self.assertEqual(c.session.line(b"421 4.4.2 idle too long"), [])  # a reply to nothing
        self.assertFalse(c.session.usable)
        outputs = c.session.transaction(tx("c@dest.test"))
        self.assertEqual((sent(outputs), error(outputs).state), (b"", "rset"))


class ParameterTests(unittest.TestCase):
    def transaction(self, ehlo: tuple[bytes, ...], transaction: Transaction) -> list[Output]:
        c = Conversation()
        c.ready(*ehlo)
        return c.session.transaction(transaction)

    def test_dsn_parameters_only_to_a_dsn_server(self) -> None:
        dsn = tx("b@dest.test", ret="HDRS", envid="id+1 x")
        dsn = dsn.with_recipients([Recipient("b@dest.test", notify="SUCCESS,FAILURE",
                                             orcpt="rfc822;b+x@dest.test")])
        commands = sent(self.transaction(ESMTP, dsn)).split(b"\r\n")
        self.assertEqual(commands[0], f"MAIL FROM:<a@out.test> SIZE={len(MESSAGE)} RET=HDRS "
                                      f"ENVID=id+2B1+20x".encode())
        self.assertEqual(commands[1],
                         b"RCPT TO:<b@dest.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bx@dest.test")
        commands = sent(self.transaction((b"250-mx", b"250 PIPELINING"), dsn)).split(b"\r\n")
        self.assertEqual(commands[:2], [b"MAIL FROM:<a@out.test>", b"RCPT TO:<b@dest.test>"])

    def test_body_8bitmime_only_for_8bit_content(self) -> None:
        eight_bit = MESSAGE + "Grüße\r\n".encode()
        outputs = self.transaction(ESMTP, tx("b@dest.test", message=eight_bit))
        self.assertIn(b" BODY=8BITMIME", sent(outputs).split(b"\r\n")[0])
        outputs = self.transaction(ESMTP, tx("b@dest.test"))
        self.assertNotIn(b"BODY=", sent(outputs))

    def test_8bit_content_is_never_sent_to_a_peer_without_8bitmime(self) -> None:
        # The client never changes content (a DKIM signature would break): the
        # pipeline's for_peer makes it 7-bit; should 8-bit bytes still come, it refuses.
        eight_bit = tx("b@dest.test", message=MESSAGE + b"\xe9\r\n")
        outputs = self.transaction((b"250-mx", b"250 PIPELINING"), eight_bit)
        self.assertEqual(sent(outputs), b"")
        (result,) = results(outputs)
        self.assertEqual((result.state, result.status, result.permanent), ("mailfrom", "5.6.3", True))
        self.assertIn("8BITMIME", result.description)

    def test_the_message_goes_as_it_is_only_dot_stuffed(self) -> None:
        message = b"Subject: x\r\n\r\n.dot\r\nGr\xc3\xbc\xc3\x9fe\r\n"
        c = Conversation()
        c.ready()
        c.session.transaction(tx("b@dest.test", message=message))
        self.assertEqual(c.replies(b"250 ok", b"250 ok", b"354 go"),
                         [b"Subject: x\r\n\r\n..dot\r\nGr\xc3\xbc\xc3\x9fe\r\n.\r\n"])

    def test_a_message_over_the_peers_size_is_refused_here(self) -> None:
        outputs = self.transaction((b"250-mx", b"250 SIZE 20"), tx("b@dest.test"))
        self.assertEqual(sent(outputs), b"")
        (result,) = results(outputs)
        self.assertEqual((result.state, result.status, result.permanent), ("mailfrom", "5.3.4", True))
        self.assertEqual(result.description,
                         f"message of {len(MESSAGE) + 3} bytes exceeds the peer's limit of 20")

    def test_smtputf8(self) -> None:
        utf8 = tx("jörg@dest.test", smtputf8=True)
        self.assertIn(b" SMTPUTF8", sent(self.transaction(ESMTP, utf8)).split(b"\r\n")[0])
        plain = (b"250-mx", b"250 8BITMIME")
        (result,) = results(self.transaction(plain, utf8))
        self.assertEqual((result.status, result.permanent), ("5.6.7", True))
        # Asked for but not needed: goes to a server without SMTPUTF8, without the parameter.
        outputs = self.transaction(plain, tx("b@dest.test", smtputf8=True))
        self.assertEqual(sent(outputs), b"MAIL FROM:<a@out.test>\r\n")


class TroubleTests(unittest.TestCase):
    def test_garbage_is_a_protocol_error_that_drops_the_connection(self) -> None:
        c = Conversation()
        outputs = c.replies(b"HTTP/1.1 400 Bad Request")
        self.assertEqual(events(outputs), [Abort, Failed])
        exc = error(outputs)
        self.assertEqual((exc.state, exc.description[:15]), ("greeting", "protocol error:"))

    def test_a_code_that_changes_inside_a_multiline_reply_is_a_protocol_error(self) -> None:
        c = Conversation()
        c.replies(b"220 mx.test")
        exc = error(c.replies(b"250-mx.test", b"550 no"))
        self.assertEqual(exc.state, "ehlo")
        self.assertIn("reply code changed", exc.description)

    def test_a_timeout_names_its_step_and_drops_the_connection(self) -> None:
        c = Conversation()
        c.ready()
        c.session.transaction(tx("b@dest.test"))
        c.replies(b"250 ok")
        outputs = c.session.timed_out()
        self.assertEqual(events(outputs), [Abort, Failed])
        self.assertEqual(error(outputs).description, "timeout after 5s waiting for the rcptto reply")
        self.assertEqual(c.session.timed_out(), [])  # nothing is awaited any more

    def test_a_lost_connection_names_its_step(self) -> None:
        c = Conversation()
        c.ready()
        c.session.transaction(tx("b@dest.test"))
        c.replies(b"250 ok", b"250 ok", b"354 go")
        exc = error(c.session.connection_lost("Connection lost."))
        self.assertEqual((exc.state, exc.description),
                         ("message", "connection lost during message: Connection lost."))
        # Lost while idle: nothing fails, but the session is done.
        c = Conversation()
        c.ready()
        self.assertEqual(c.session.connection_lost("gone"), [])
        self.assertFalse(c.session.usable)

    def test_quit(self) -> None:
        c = Conversation()
        c.ready()
        self.assertEqual(c.session.quit(), [b"QUIT\r\n"])
        self.assertEqual(c.waiting_for, ("quit", 9))
        self.assertEqual(events(c.replies(b"221 bye")), [Close])
        self.assertFalse(c.session.usable)
