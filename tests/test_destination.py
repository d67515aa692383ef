"""One destination with its real client connections, all on a task.Clock: no sockets, no real time.

The reactor here can only open connections (to scripted receiving servers on
StringTransports); it has no timers at all, so every timeout, rate wait and
idle period must run on the context's clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from smtpeter.attempt import Capabilities, RecipientResult
from smtpeter.config import Timeouts, parse_config
from smtpeter.delivery.client_session import NotForThisPeer, Transaction
from smtpeter.delivery.destination import Context, Destination
from smtpeter.delivery.shaping import profiles, shaping_for
from smtpeter.envelope import Envelope, Recipient

MESSAGE = "Subject: Grüße\r\n\r\nHallo.\r\n".encode()
LATENCY = 0.01  # every reply of the scripted servers takes this long


class ScriptedMX:
    """A receiving server: answers every command line after LATENCY on the clock."""

    def __init__(self, clock: task.Clock, ehlo: tuple[str, ...] = ("PIPELINING", "8BITMIME"),
                 rcpt: Callable[[str], bytes] = lambda address: b"250 2.1.5 ok",
                 greets: bool = True) -> None:
        self.clock = clock
        self.ehlo = ehlo
        self.rcpt = rcpt
        self.greets = greets
        self.commands: list[str] = []
        self.messages: list[bytes] = []
        self.connections = 0

    def accept(self, protocol: Any) -> StringTransport:
        self.connections += 1
        transport = _Wire(self, protocol)
        if self.greets:
            transport.reply(b"220 mx.dest.test ESMTP")
        return transport

    def answer(self, line: bytes) -> bytes:
        command = line.decode()
        self.commands.append(command)
        verb = command.split(" ", 1)[0].split(":", 1)[0].upper()
        if verb == "EHLO":
            return b"\r\n".join(f"250{'-' if n < len(self.ehlo) else ' '}{keyword}".encode()
                                for n, keyword in enumerate(("mx.dest.test", *self.ehlo)))
        if verb == "RCPT":
            return self.rcpt(command.split("<", 1)[1].split(">", 1)[0])
        return {"DATA": b"354 go ahead", "QUIT": b"221 bye"}.get(verb, b"250 ok")


class _Wire(StringTransport):
    """The client's transport: what it writes goes to the scripted server, replies come back later."""

    def __init__(self, server: ScriptedMX, protocol: Any) -> None:
        super().__init__(hostAddress=IPv4Address("TCP", "192.0.2.9", 40000))
        self.server = server
        self.protocol = protocol
        self.pending = b""
        self.in_data = False

    def write(self, data: bytes) -> None:
        super().write(data)
        self.pending += data
        while True:
            if self.in_data:
                end = self.pending.find(b"\r\n.\r\n")
                if end < 0 and self.pending != b".\r\n":
                    return
                if end < 0:  # an empty message
                    message, self.pending = b"", b""
                else:
                    message, self.pending = self.pending[:end + 2], self.pending[end + 5:]
                self.server.messages.append(message)
                self.in_data = False
                self.reply(b"250 2.0.0 queued")
                continue
            line, found, rest = self.pending.partition(b"\r\n")
            if not found:
                return
            self.pending = rest
            answer = self.server.answer(line)
            self.in_data = answer.startswith(b"354")
            self.reply(answer)

    def reply(self, data: bytes) -> None:
        def arrive() -> None:
            if not self.disconnecting:
                self.protocol.dataReceived(data + b"\r\n")

        self.server.clock.callLater(LATENCY, arrive)


class Connector:
    def disconnect(self) -> None:
        pass


class ConnectOnlyReactor:
    """Opens connections to scripted servers by IP; nothing else (no callLater)."""

    def __init__(self, servers: dict[str, ScriptedMX]) -> None:
        self.servers = servers

    def connectTCP(self, host: str, port: int, factory: Any, timeout: float) -> Connector:
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        protocol.makeConnection(self.servers[host].accept(protocol))
        return Connector()


class Resolver:
    async def addresses(self, host: str) -> list[str]:
        return [host]  # the hosts here are IP addresses


class DestinationTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.for_peer_calls: list[tuple[bytes, Capabilities]] = []

    def destination(self, server: ScriptedMX, for_peer: Any = None, timeouts: Timeouts | None = None,
                    **profile: Any) -> Destination:
        config = parse_config({"delivery": {"hold": False, "profiles": {"default": profile}}}).delivery
        context = Context(ConnectOnlyReactor({"192.0.2.1": server}), self.clock, Resolver(),
                          timeouts or config.timeouts, "out.test", for_peer=for_peer or self.for_peer)
        destination = Destination("route:192.0.2.1:25", [("192.0.2.1", 25)],
                                  shaping_for(["192.0.2.1"], config, profiles(config)), context)
        self.addCleanup(self.close, destination)
        return destination

    def close(self, destination: Destination) -> None:
        destination.close()
        self.clock.advance(1)
        self.assertEqual(self.clock.getDelayedCalls(), [], "every timer ran on the clock and ended")

    async def for_peer(self, transaction: Transaction, capabilities: Capabilities) -> Transaction:
        """A stand-in for the pipeline: marks what it made for this peer."""
        self.for_peer_calls.append((transaction.message, capabilities))
        return transaction.with_message(b"X-For-Peer: yes\r\n" + transaction.message)

    def submit(self, destination: Destination, *recipients: str) -> defer.Deferred:
        return destination.submit(Transaction(Envelope("a@out.test", tuple(Recipient(r) for r in recipients)),
                                              MESSAGE))

    def advance(self, seconds: float, step: float = LATENCY) -> None:
        for _ in range(round(seconds / step)):
            self.clock.advance(step)

    def test_delivers_what_for_peer_made_over_one_connection(self) -> None:
        server = ScriptedMX(self.clock)
        destination = self.destination(server)
        first = self.submit(destination, "b@dest.test")
        second = self.submit(destination, "c@dest.test")
        self.advance(1)
        for result in (first, second):
            (delivered,) = self.successResultOf(result)
            self.assertTrue(delivered.delivered)
            self.assertEqual((delivered.peer.ip, delivered.peer.local_ip), ("192.0.2.1", "192.0.2.9"))
        self.assertEqual(server.connections, 1)
        self.assertEqual(server.messages, [b"X-For-Peer: yes\r\n" + MESSAGE] * 2)
        self.assertIn("RSET", server.commands)
        # for_peer got the transaction as queued and the peer's capabilities.
        self.assertEqual([(message, caps.eightbitmime) for message, caps in self.for_peer_calls],
                         [(MESSAGE, True)] * 2)
        self.assertIn("MAIL FROM:<a@out.test> BODY=8BITMIME", server.commands)

    def test_a_message_that_cannot_be_converted_fails_permanently_unsent(self) -> None:
        async def cannot(transaction: Transaction, capabilities: Capabilities) -> Transaction:
            raise NotForThisPeer("5.6.3", "the receiving server lacks 8BITMIME and the message cannot be "
                                          "converted: 8-bit text in the Subject header field")

        server = ScriptedMX(self.clock, ehlo=("PIPELINING",))
        destination = self.destination(server, for_peer=cannot)
        result = self.submit(destination, "b@dest.test")
        self.advance(1)
        (refused,) = self.successResultOf(result)
        self.assertEqual((refused.state, refused.code, refused.status, refused.permanent), (
            "mailfrom", None, "5.6.3", True))
        self.assertEqual(refused.description, "the receiving server lacks 8BITMIME and the message cannot be "
                                              "converted: 8-bit text in the Subject header field")
        self.assertFalse([c for c in server.commands if c.startswith("MAIL")])

    def test_too_many_recipients_go_on_with_the_bytes_made_for_this_peer(self) -> None:
        def rcpt(address: str) -> bytes:
            """One recipient per transaction."""
            last_mail = max(n for n, command in enumerate(server.commands) if command.startswith("MAIL"))
            rcpts = len(server.commands) - last_mail - 1
            return b"452 4.5.3 Too many recipients" if rcpts > 1 else b"250 2.1.5 ok"

        server = ScriptedMX(self.clock, rcpt=rcpt)
        destination = self.destination(server)
        result = self.submit(destination, "b@dest.test", "c@dest.test")
        self.advance(1)
        self.assertTrue(all(r.delivered for r in self.successResultOf(result)))
        self.assertEqual(len(server.messages), 2)
        # Made once for this peer: the second transaction sends the same bytes.
        self.assertEqual(len(self.for_peer_calls), 1)

    def test_a_silent_server_times_out_at_the_greeting_timeout(self) -> None:
        server = ScriptedMX(self.clock, greets=False)
        destination = self.destination(server, timeouts=Timeouts(greeting=30))
        result = self.submit(destination, "b@dest.test")
        self.clock.advance(29.9)
        self.assertNoResult(result)
        self.clock.advance(0.1)
        (failed,) = self.successResultOf(result)
        self.assertEqual((failed.state, failed.permanent, failed.description),
                         ("greeting", False, "timeout after 30s waiting for the greeting reply"))
        self.assertTrue(destination.down)

    def test_an_idle_session_quits_after_the_idle_timeout(self) -> None:
        server = ScriptedMX(self.clock)
        destination = self.destination(server, idle_timeout=5)
        result: defer.Deferred = self.submit(destination, "b@dest.test")
        self.advance(1)
        self.assertIsInstance(self.successResultOf(result)[0], RecipientResult)
        self.assertNotIn("QUIT", server.commands)
        self.clock.advance(4)
        self.assertEqual(destination.connected, 1)
        self.advance(1)
        self.assertEqual(server.commands[-1], "QUIT")
        self.assertEqual((destination.connected, destination.sessions), (0, 0))
