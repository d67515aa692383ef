"""One outbound SMTP session: connect, greeting, EHLO, STARTTLS, transactions, QUIT.

``SMTPClientProtocol`` is the thin Twisted edge: it writes command lines and
hands each parsed reply, in order, to whoever waits for it. ``SMTPSession``
holds the conversation as plain sequential code over that edge, with a
timeout on every step (RFC 5321 §4.5.3.2).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from OpenSSL import SSL
from twisted.internet import defer, error, protocol, ssl
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer

from smtpeter.address import xtext_encode
from smtpeter.config import Timeouts
from smtpeter.delivery.client_session import Capabilities, ProtocolError, Reply, ReplyParser, data_payload
from smtpeter.envelope import Envelope, Recipient
from smtpeter.outbound import wire

log = Logger()


class SessionError(Exception):
    """The session (not one recipient) failed at ``state``; all its recipients share the result."""

    def __init__(self, state: str, description: str, reply: Reply | None = None,
                 permanent: bool = False) -> None:
        super().__init__(description)
        self.state = state
        self.description = description
        self.reply = reply
        self.permanent = permanent


@dataclass(frozen=True)
class Transaction:
    """One message for one or more recipients: MAIL FROM, RCPT TO..., DATA."""

    envelope: Envelope  # the sender ("" for <>), the recipients with their DSN requests, RET, ENVID
    message: bytes

    @property
    def recipients(self) -> tuple[Recipient, ...]:
        return self.envelope.recipients

    def with_recipients(self, recipients: Iterable[Recipient]) -> Transaction:
        return replace(self, envelope=self.envelope.with_recipients(recipients))


@dataclass
class RecipientResult:
    """What the peer said about one recipient."""

    address: str
    state: str  # the SMTP step the verdict came at: rcptto, data, message, ...
    code: int | None
    status: str | None
    description: str
    delivered: bool = False
    permanent: bool = False
    peer: Peer | None = None

    @classmethod
    def from_reply(cls, address: str, state: str, reply: Reply) -> RecipientResult:
        status = reply.status or (f"{str(reply.code)[0]}.0.0" if reply.code >= 400 else "2.0.0")
        return cls(address, state, reply.code, status, str(reply),
                   delivered=reply.positive and state == "message", permanent=reply.code >= 500)


@dataclass
class Peer:
    """Where a session is connected, for events: their MX host and IP, our IP, TLS details."""

    mx: str
    ip: str
    port: int
    local_ip: str = ""
    tls: bool = False
    tls_version: str | None = None
    cipher: str | None = None
    capabilities: Capabilities = field(default_factory=Capabilities)


@implementer(IOpenSSLClientConnectionCreator)
class OpportunisticTLS:
    """TLS for MX delivery: encrypt, send SNI, do not insist on a valid certificate.

    This is Postfix's "may"/"encrypt" level: without DANE or MTA-STS there is
    no trustworthy name to check an MX certificate against.
    """

    def __init__(self, hostname: str) -> None:
        # No SNI for an address literal (RFC 6066 §3).
        self._server_name = None if isIPAddress(hostname) or isIPv6Address(hostname) else (
            hostname.encode("idna"))
        self._context = ssl.CertificateOptions(verify=False).getContext()

    def clientConnectionForTLS(self, tls_protocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tls_protocol)
        if self._server_name:
            connection.set_tlsext_host_name(self._server_name)
        connection.set_connect_state()
        return connection


class SMTPClientProtocol(LineReceiver):
    """Writes commands; hands replies, in order, to waiting Deferreds."""

    MAX_LENGTH = 65536

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self._parser = ReplyParser()
        self._deadline: Any = None
        self._timeouts: deque[float] = deque()  # for the waiters behind the first
        self._waiting: deque[defer.Deferred] = deque()
        self._ready: deque[Reply] = deque()
        self._lost: Exception | None = None
        self.connected_deferred: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        # Without TCP_NODELAY the final "." waits for a delayed ACK: 23 msg/s per
        # connection instead of ~900 (shared/spec/libraries.md §1.3).
        if hasattr(self.transport, "setTcpNoDelay"):
            self.transport.setTcpNoDelay(True)
        self.connected_deferred.callback(self)

    def lineReceived(self, line: bytes) -> None:
        try:
            reply = self._parser.line(line)
        except ProtocolError as exc:
            self._fail(exc)
            self.transport.abortConnection()
            return
        if reply is None:
            return
        if self._waiting:
            waiter = self._waiting.popleft()
            self._next_deadline()
            waiter.callback(reply)
        else:
            self._ready.append(reply)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._fail(ProtocolError("reply line too long"))
        self.transport.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self._fail(reason.value if reason is not None else error.ConnectionLost())

    def _fail(self, exc: Exception) -> None:
        self._lost = self._lost or exc
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        self._timeouts.clear()
        while self._waiting:
            self._waiting.popleft().errback(exc)

    def next_reply(self, timeout: float) -> defer.Deferred:
        """The next reply from the server (replies are matched to commands in order).

        Fails with TimeoutError if it takes longer than ``timeout``. One timer
        per connection, moved along, rather than one per reply: a busy session
        waits for five replies per message.
        """
        if self._ready:
            return defer.succeed(self._ready.popleft())
        if self._lost is not None:
            return defer.fail(self._lost)
        d: defer.Deferred = defer.Deferred()
        self._waiting.append(d)
        if len(self._waiting) == 1:
            self._arm(timeout)
        else:
            self._timeouts.append(timeout)
        return d

    def _arm(self, timeout: float) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.reset(timeout)
        else:
            self._deadline = self.clock.callLater(timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._deadline = None
        if self._waiting:
            self._fail(defer.TimeoutError())

    def _next_deadline(self) -> None:
        """The head waiter was answered: time the next one, or stop the timer."""
        if self._waiting:
            self._arm(self._timeouts.popleft() if self._timeouts else 300.0)
        elif self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
            self._deadline = None

    def write_lines(self, *lines: bytes) -> None:
        self.transport.write(b"".join(line + b"\r\n" for line in lines))

    def start_tls(self, creator: Any) -> None:
        # Anything the server pipelined behind its 220 is not part of the TLS
        # session (the client-side mirror of CVE-2011-0411).
        self.clearLineBuffer()
        self._ready.clear()
        self.transport.startTLS(creator)


class _ClientFactory(protocol.ClientFactory):
    protocol = SMTPClientProtocol
    noisy = False  # one per connection: "Starting factory" lines would flood the log

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.result: defer.Deferred = defer.Deferred()

    def buildProtocol(self, addr: Any) -> SMTPClientProtocol:
        proto = SMTPClientProtocol(self.clock)
        proto.factory = self
        proto.connected_deferred.chainDeferred(self.result)
        return proto

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        if not self.result.called:
            self.result.errback(reason)


class SMTPSession:
    """A connected outbound SMTP session that can carry several transactions."""

    def __init__(self, proto: SMTPClientProtocol, peer: Peer, helo_name: str, timeouts: Timeouts,
                 clock: Any) -> None:
        self.proto = proto
        self.peer = peer
        self.helo_name = helo_name
        self.timeouts = timeouts
        self.clock = clock
        self.transactions = 0
        self._usable = True

    @property
    def capabilities(self) -> Capabilities:
        return self.peer.capabilities

    @property
    def usable(self) -> bool:
        """Whether another transaction may start (the server may have gone while we idled)."""
        return self._usable and self.proto._lost is None

    async def _reply(self, state: str, timeout: float) -> Reply:
        try:
            return await self.proto.next_reply(timeout)
        except defer.TimeoutError:
            self.abort()
            raise SessionError(state, f"timeout after {timeout:g}s waiting for the {state} reply") from None
        except ProtocolError as exc:
            self._usable = False
            raise SessionError(state, f"protocol error: {exc}") from None
        except Exception as exc:
            self._usable = False
            raise SessionError(state, f"connection lost during {state}: {_describe(exc)}") from None

    async def command(self, state: str, line: bytes, timeout: float) -> Reply:
        self.proto.write_lines(line)
        return await self._reply(state, timeout)

    async def handshake(self, tls: str) -> None:
        """Greeting, EHLO (HELO if refused) and, when offered or required, STARTTLS."""
        greeting = await self._reply("greeting", self.timeouts.greeting)
        if greeting.code != 220:
            raise SessionError("greeting", str(greeting), greeting)
        await self._ehlo()
        if tls == "disabled":
            return
        if not self.capabilities.starttls:
            if tls == "required":
                raise SessionError("starttls", "TLS is required for this destination but not offered")
            return
        reply = await self.command("starttls", b"STARTTLS", self.timeouts.starttls)
        if reply.code != 220:
            if tls == "required":
                raise SessionError("starttls", str(reply), reply)
            return  # opportunistic: carry on in plaintext, as the server wants
        try:
            self.proto.start_tls(OpportunisticTLS(self.peer.mx))
            await self._ehlo()
        except SessionError as exc:
            raise SessionError("starttls", f"TLS handshake failed: {exc.description}") from None
        self.peer.tls = True
        connection = getattr(self.proto.transport, "getHandle", lambda: None)()
        if isinstance(connection, SSL.Connection):
            self.peer.tls_version = connection.get_protocol_version_name()
            self.peer.cipher = connection.get_cipher_name()

    async def _ehlo(self) -> None:
        name = self.helo_name.encode("idna")
        reply = await self.command("ehlo", b"EHLO " + name, self.timeouts.ehlo)
        if reply.ok:
            self.peer.capabilities = Capabilities.from_ehlo(reply)
            return
        if reply.code in (421,):
            raise SessionError("ehlo", str(reply), reply)
        reply = await self.command("helo", b"HELO " + name, self.timeouts.ehlo)
        if not reply.ok:
            raise SessionError("helo", str(reply), reply)
        self.peer.capabilities = Capabilities()

    async def deliver(self, tx: Transaction) -> list[RecipientResult]:
        """Run one transaction; one result per recipient.

        Raises SessionError for failures that concern the whole session
        (timeouts, lost connection, a failed RSET before reuse).
        """
        caps = self.capabilities
        message = tx.message
        if not caps.eightbitmime and not message.isascii():
            try:
                message = wire.make_7bit(message)
            except wire.CannotDowngrade as exc:
                return [RecipientResult(r.address, "mailfrom", None, "5.6.3",
                                        f"the receiving server lacks 8BITMIME and the message cannot be "
                                        f"converted: {exc}", permanent=True) for r in tx.recipients]
        payload = data_payload(message)
        refusal = self._refuse_locally(tx, caps, len(payload))
        if refusal is not None:
            return [RecipientResult(r.address, refusal[0], None, refusal[1], refusal[2], permanent=True)
                    for r in tx.recipients]
        mail, rcpts = self._envelope_commands(tx, caps, message)
        reset = self.transactions > 0
        self.transactions += 1
        if caps.pipelining:
            self.proto.write_lines(*([b"RSET"] if reset else []), mail, *rcpts, b"DATA")
            if reset:
                await self._check_rset()
            mail_reply = await self._step("mailfrom", self.timeouts.mail)
            rcpt_replies = [await self._step("rcptto", self.timeouts.rcpt) for _ in rcpts]
            data_reply = await self._step("data", self.timeouts.data)
        else:
            if reset:
                self.proto.write_lines(b"RSET")
                await self._check_rset()
            mail_reply = await self._step("mailfrom", self.timeouts.mail, mail)
            rcpt_replies, data_reply = [], None
            if mail_reply.positive:
                for line in rcpts:
                    rcpt_replies.append(await self._step("rcptto", self.timeouts.rcpt, line))
                if any(r.positive for r in rcpt_replies):
                    data_reply = await self._step("data", self.timeouts.data, b"DATA")
        if not mail_reply.positive:
            if data_reply is not None and data_reply.code == 354:
                await self._send(b".\r\n")  # a server that still says 354 gets an empty message
            return [RecipientResult.from_reply(r.address, "mailfrom", mail_reply) for r in tx.recipients]
        results: dict[str, RecipientResult] = {}
        accepted = []
        for recipient, reply in zip(tx.recipients, rcpt_replies, strict=False):
            if reply.positive:
                accepted.append(recipient.address)
            else:
                results[recipient.address] = RecipientResult.from_reply(recipient.address, "rcptto", reply)
        if accepted:
            assert data_reply is not None
            if data_reply.code != 354:
                for address in accepted:
                    results[address] = RecipientResult.from_reply(address, "data", data_reply)
            else:
                final = await self._send(payload)
                for address in accepted:
                    results[address] = RecipientResult.from_reply(address, "message", final)
        elif data_reply is not None and data_reply.code == 354:
            await self._send(b".\r\n")
        return [results[r.address] for r in tx.recipients]

    async def _step(self, state: str, timeout: float, line: bytes | None = None) -> Reply:
        """The reply for one step of a transaction (sending ``line`` first, without pipelining).

        A 421 means the server is closing the session: nothing after it will be
        answered, so the whole transaction gets that reply (and its text, which
        the backoff rules need) instead of a "connection lost".
        """
        if line is not None:
            self.proto.write_lines(line)
        reply = await self._reply(state, timeout)
        if reply.code == 421:
            self._usable = False
            raise SessionError(state, str(reply), reply)
        return reply

    async def _check_rset(self) -> None:
        reply = await self._reply("rset", self.timeouts.rset)
        if not reply.positive:
            self._usable = False
            raise SessionError("rset", str(reply), reply)

    async def _send(self, payload: bytes) -> Reply:
        self.proto.transport.write(payload)
        # The timer covers the transfer too: allow a slow link 16 KB/s on top.
        return await self._step("message", self.timeouts.data_done + len(payload) / 16384)

    def _refuse_locally(self, tx: Transaction, caps: Capabilities, size: int) -> tuple[str, str, str] | None:
        if caps.size is not None and size > caps.size:
            return "mailfrom", "5.3.4", f"message of {size} bytes exceeds the peer's limit of {caps.size}"
        if tx.envelope.smtputf8 and not caps.smtputf8 and needs_smtputf8(tx):
            return "mailfrom", "5.6.7", "the message needs SMTPUTF8, which the receiving server lacks"
        return None

    def _envelope_commands(self, tx: Transaction, caps: Capabilities,
                           message: bytes) -> tuple[bytes, list[bytes]]:
        params = []
        if caps.size is not None:
            params.append(f"SIZE={len(message)}")
        if caps.eightbitmime and not message.isascii():
            params.append("BODY=8BITMIME")
        if tx.envelope.smtputf8 and caps.smtputf8:
            params.append("SMTPUTF8")
        if caps.dsn:
            if tx.envelope.ret:
                params.append(f"RET={tx.envelope.ret}")
            if tx.envelope.envid:
                params.append(f"ENVID={xtext_encode(tx.envelope.envid)}")
        mail = f"MAIL FROM:<{tx.envelope.sender or ''}>" + "".join(" " + p for p in params)
        rcpts = []
        for recipient in tx.recipients:
            line = f"RCPT TO:<{recipient.address}>"
            if caps.dsn:
                if recipient.notify:
                    line += f" NOTIFY={recipient.notify}"
                if recipient.orcpt:
                    kind, _, address = recipient.orcpt.partition(";")
                    line += f" ORCPT={kind};{xtext_encode(address)}"
            rcpts.append(line)
        return mail.encode(), [r.encode() for r in rcpts]

    async def quit(self) -> None:
        if self.usable:
            try:
                await self.command("quit", b"QUIT", self.timeouts.quit)
            except SessionError:
                pass
        self.proto.transport.loseConnection()

    def abort(self) -> None:
        self._usable = False
        self.proto.transport.abortConnection()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, error.TimeoutError | defer.TimeoutError):
        return "connection timed out"
    return str(exc) or type(exc).__name__


def needs_smtputf8(tx: Transaction) -> bool:
    """Whether the message really needs SMTPUTF8 (RFC 6531): a non-ASCII address or header.

    A client may ask for SMTPUTF8 on mail that needs none; such mail still goes
    to a server without it.
    """
    if not (tx.envelope.sender or "").isascii() or any(not r.address.isascii() for r in tx.recipients):
        return True
    end = tx.message.find(b"\r\n\r\n")
    return not (tx.message if end < 0 else tx.message[:end]).isascii()


async def connect(reactor: Any, mx: str, ip: str, port: int, timeouts: Timeouts,
                  clock: Any = None) -> SMTPClientProtocol:
    """Open a TCP connection (its reply timers on ``clock``, by default the reactor);
    raises SessionError("connect", ...)."""
    factory = _ClientFactory(clock or reactor)
    connector = reactor.connectTCP(ip, port, factory, timeout=timeouts.connect)
    try:
        return await factory.result
    except Exception as exc:
        connector.disconnect()
        raise SessionError("connect", f"{mx}[{ip}]:{port}: {_describe(exc)}") from None
