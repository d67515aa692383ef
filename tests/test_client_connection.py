"""The SMTP client's Twisted edge on a fake transport and task.Clock: deadlines, TLS, closing."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, error, task
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from smtpeter.attempt import Peer
from smtpeter.config import Timeouts
from smtpeter.delivery.client_connection import ClientConnection, OpportunisticTLS, connect
from smtpeter.delivery.client_session import ClientSession, SessionError, Transaction
from smtpeter.envelope import Envelope, Recipient

TIMEOUTS = Timeouts(greeting=1, ehlo=2, starttls=3, mail=4, rcpt=5, data=6, data_done=7, rset=8, quit=9)
MESSAGE = b"Subject: hi\r\n\r\nHello.\r\n"
TRANSACTION = Transaction(Envelope("a@out.test", (Recipient("b@dest.test"),)), MESSAGE)


class TLSTransport(StringTransport):
    """A StringTransport that remembers when TLS was started and what it had written by then."""

    creator: Any = None
    before_tls = b""

    def startTLS(self, creator: Any) -> None:
        self.creator = creator
        self.before_tls = self.value()


class ConnectionTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()

    def connection(self, tls: str = "disabled") -> tuple[ClientConnection, TLSTransport]:
        session = ClientSession("out.test", TIMEOUTS, tls)
        connection = ClientConnection(session, Peer("mx.test", "192.0.2.1", 25), self.clock)
        transport = TLSTransport()
        connection.makeConnection(transport)
        return connection, transport

    def ready(self) -> tuple[ClientConnection, TLSTransport]:
        connection, transport = self.connection()
        handshake = connection.handshake()
        connection.dataReceived(b"220 mx.test ESMTP\r\n250-mx.test\r\n250 PIPELINING\r\n")
        self.successResultOf(handshake)
        transport.clear()
        return connection, transport

    def deadline(self) -> float:
        """When the connection's one timer fires, relative to now."""
        (call,) = self.clock.getDelayedCalls()
        return call.getTime() - self.clock.seconds()

    def test_the_greeting_times_out_at_its_timeout_without_real_time(self) -> None:
        connection, transport = self.connection()
        handshake = connection.handshake()
        self.assertEqual(connection.peer.local_ip, "10.0.0.1")  # our side, for events
        self.clock.advance(0.999)
        self.assertNoResult(handshake)
        self.clock.advance(0.001)
        exc = self.failureResultOf(handshake, SessionError).value
        self.assertEqual((exc.state, exc.description),
                         ("greeting", "timeout after 1s waiting for the greeting reply"))
        self.assertTrue(transport.disconnected)  # aborted
        self.assertFalse(connection.usable)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_one_deadline_moves_along_the_steps(self) -> None:
        connection, transport = self.connection()
        handshake = connection.handshake()
        self.assertEqual(self.deadline(), 1)
        self.clock.advance(0.5)
        connection.dataReceived(b"220 mx.test\r\n")
        self.assertEqual((transport.value(), self.deadline()), (b"EHLO out.test\r\n", 2))
        connection.dataReceived(b"250-mx.test\r\n")  # half a reply does not move it
        self.clock.advance(1.5)
        self.assertEqual(self.deadline(), 0.5)
        connection.dataReceived(b"250 PIPELINING\r\n")
        self.successResultOf(handshake)
        self.assertEqual(self.clock.getDelayedCalls(), [])  # idle: no timer at all
        result = defer.ensureDeferred(connection.deliver(TRANSACTION))
        self.assertEqual(self.deadline(), 4)  # MAIL's
        connection.dataReceived(b"250 ok\r\n")
        self.assertEqual(self.deadline(), 5)  # RCPT's
        connection.dataReceived(b"250 ok\r\n")
        self.assertEqual(self.deadline(), 6)  # DATA's
        connection.dataReceived(b"354 go ahead\r\n")
        payload = MESSAGE + b".\r\n"
        self.assertEqual(self.deadline(), 7 + len(payload) / 16384)  # the final reply's, with the transfer
        self.clock.advance(7)
        self.assertNoResult(result)
        self.clock.advance(len(payload) / 16384)
        exc = self.failureResultOf(result, SessionError).value
        self.assertEqual((exc.state, exc.description[:13]), ("message", "timeout after"))
        self.assertTrue(transport.disconnected)

    def test_replies_in_any_chunks(self) -> None:
        connection, transport = self.ready()
        result = defer.ensureDeferred(connection.deliver(TRANSACTION))
        self.assertEqual(transport.value(), b"MAIL FROM:<a@out.test>\r\nRCPT TO:<b@dest.test>\r\nDATA\r\n")
        transport.clear()
        connection.dataReceived(b"250 ok\r\n250 ok\r\n35")
        connection.dataReceived(b"4 go ahead\r\n")
        self.assertEqual(transport.value(), MESSAGE + b".\r\n")
        connection.dataReceived(b"250 2.0.0 queued\r\n")
        (delivered,) = self.successResultOf(result)
        self.assertTrue(delivered.delivered)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_starttls_discards_what_came_behind_the_220(self) -> None:
        connection, transport = self.connection("opportunistic")
        handshake = connection.handshake()
        connection.dataReceived(b"220 mx.test\r\n250-mx.test\r\n250 STARTTLS\r\n")
        # An injected reply behind the 220 must not pass for the EHLO reply under TLS.
        connection.dataReceived(b"220 go ahead\r\n250 injected\r\n")
        self.assertIsInstance(transport.creator, OpportunisticTLS)
        self.assertEqual(transport.before_tls, b"EHLO out.test\r\nSTARTTLS\r\n")
        self.assertEqual(transport.value(), b"EHLO out.test\r\nSTARTTLS\r\nEHLO out.test\r\n")
        self.assertNoResult(handshake)
        connection.dataReceived(b"250-mx.test\r\n250 8BITMIME\r\n")
        self.successResultOf(handshake)
        self.assertTrue(connection.peer.tls and connection.peer.capabilities.eightbitmime)

    def test_a_lost_connection_fails_what_is_under_way(self) -> None:
        connection, _ = self.ready()
        result = defer.ensureDeferred(connection.deliver(TRANSACTION))
        connection.dataReceived(b"250 ok\r\n")
        connection.connectionLost(Failure(error.ConnectionLost("Connection to the other side was lost.")))
        exc = self.failureResultOf(result, SessionError).value
        self.assertEqual(exc.state, "rcptto")
        self.assertIn("connection lost during rcptto", exc.description)
        self.assertFalse(connection.usable)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_line_too_long_is_a_protocol_error(self) -> None:
        connection, transport = self.connection()
        handshake = connection.handshake()
        connection.dataReceived(b"220 " + b"x" * 70000)
        exc = self.failureResultOf(handshake, SessionError).value
        self.assertEqual(exc.description, "protocol error: reply line too long")
        self.assertTrue(transport.disconnected)

    def test_quit_closes_after_the_reply_or_its_timeout(self) -> None:
        connection, transport = self.ready()
        done = defer.ensureDeferred(connection.quit())
        self.assertEqual(transport.value(), b"QUIT\r\n")
        self.assertEqual(self.deadline(), 9)
        connection.dataReceived(b"221 bye\r\n")
        self.successResultOf(done)
        self.assertTrue(transport.disconnecting and not transport.disconnected)
        connection, transport = self.ready()
        done = defer.ensureDeferred(connection.quit())
        self.clock.advance(9)
        self.successResultOf(done)
        self.assertTrue(transport.disconnected)  # aborted: the server did not answer

    def test_abort_ends_the_session(self) -> None:
        connection, transport = self.ready()
        connection.abort()
        self.assertTrue(transport.disconnected)
        self.assertFalse(connection.usable)
        transport.clear()
        self.successResultOf(defer.ensureDeferred(connection.quit()))
        self.assertEqual(transport.value(), b"")  # no QUIT on a dropped connection


class ConnectTests(unittest.TestCase):
    async def test_connect_opens_tcp_with_the_connect_timeout(self) -> None:
        reactor = MemoryReactor()
        clock = task.Clock()
        peer = Peer("mx.test", "192.0.2.1", 2525)
        session = ClientSession("out.test", TIMEOUTS, "disabled")
        opening = defer.ensureDeferred(connect(reactor, clock, peer, session, 30.0))
        ((host, port, factory, timeout, _),) = reactor.tcpClients
        self.assertEqual((host, port, timeout), ("192.0.2.1", 2525, 30.0))
        connection = factory.buildProtocol(None)
        connection.makeConnection(StringTransport())
        self.assertIs(await opening, connection)
        self.assertEqual(len(clock.getDelayedCalls()), 1)  # the greeting's deadline, on the clock given

    def test_a_refused_connection(self) -> None:
        reactor = MemoryReactor()
        peer = Peer("mx.test", "192.0.2.1", 25)
        opening = defer.ensureDeferred(connect(reactor, task.Clock(), peer,
                                               ClientSession("out.test", TIMEOUTS, "disabled"), 30.0))
        factory = reactor.tcpClients[0][2]
        factory.clientConnectionFailed(reactor.connectors[0], Failure(error.ConnectionRefusedError()))
        exc = self.failureResultOf(opening, SessionError).value
        self.assertEqual((exc.state, exc.description),
                         ("connect", "mx.test[192.0.2.1]:25: connection refused"))
