"""The Twisted edge of the SMTP client: connect, lines, TLS, timeouts.

All protocol decisions live in ``client_session.ClientSession``; a
``ClientConnection`` feeds it the server's lines, carries out what it returns
and keeps one deadline on the connection's clock, moved to the timeout of
whichever step the session waits for. ``Destination`` drives it through a few
awaitable calls: ``handshake``, ``deliver``, ``quit``, ``abort``.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet import defer, error, protocol, ssl
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IDelayedCall, IOpenSSLClientConnectionCreator, IReactorTime
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer

from smtpeter.attempt import Capabilities, Peer, RecipientResult
from smtpeter.delivery.client_session import (
    Abort,
    AwaitedReply,
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


class ClientConnection(LineReceiver):
    """One outbound SMTP connection carrying a ``ClientSession``; one operation at a time."""

    MAX_LENGTH = 65536

    def __init__(self, session: ClientSession, peer: Peer, clock: IReactorTime) -> None:
        self.session = session
        self.peer = peer
        self.clock = clock
        # Fires with self once TCP is up (Protocol.connected is taken: a flag).
        self.opened: defer.Deferred = defer.Deferred()
        # What Destination awaits: the handshake from the start, later a transaction or QUIT.
        self._handshake: defer.Deferred = defer.Deferred()
        self._operation: defer.Deferred | None = self._handshake
        self._timer: IDelayedCall | None = None
        self._timed: AwaitedReply | None = None  # the step the timer runs for
        self._closed = False

    # -- the API for Destination ----------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        return self.session.capabilities

    @property
    def usable(self) -> bool:
        """Whether another transaction may start (the server may have gone while we idled)."""
        return self.session.usable and not self._closed

    def handshake(self) -> defer.Deferred:
        """Fires once greeting, EHLO and STARTTLS are done; fails with SessionError."""
        return self._handshake

    async def deliver(self, transaction: Transaction) -> list[RecipientResult]:
        """Run one transaction; one result per recipient.

        Raises SessionError for failures that concern the whole session
        (timeouts, lost connection, a 421, a failed RSET before reuse).
        """
        return await self._run(self.session.transaction(transaction))

    async def quit(self) -> None:
        """QUIT if the session is still in step, then close the connection."""
        if self._closed:
            return
        try:
            await self._run(self.session.quit())
        except SessionError:
            pass
        self._close(abort=False)

    def abort(self) -> None:
        """Drop the connection now (a failed handshake; shutdown's grace period is over)."""
        self._close(abort=True)

    # -- Twisted's side ----------------------------------------------------------------------

    def connectionMade(self) -> None:
        # Without TCP_NODELAY the final "." waits for a delayed ACK: 23 msg/s per
        # connection instead of ~900 (shared/spec/libraries.md §1.3).
        if hasattr(self.transport, "setTcpNoDelay"):
            self.transport.setTcpNoDelay(True)
        self.peer.local_ip = getattr(self.transport.getHost(), "host", "")
        self._rearm()  # the greeting's deadline
        self.opened.callback(self)

    def lineReceived(self, line: bytes) -> None:
        self._carry_out(self.session.line(line))

    def lineLengthExceeded(self, line: bytes) -> None:
        self._carry_out(self.session.protocol_error("reply line too long"))

    def connectionLost(self, reason: Any = None) -> None:
        self._closed = True
        self._carry_out(self.session.connection_lost(
            _describe(reason.value if reason is not None else error.ConnectionLost())))

    # -- carrying out the session's outputs ------------------------------------------------------

    def _run(self, outputs: list[Output]) -> defer.Deferred:
        operation = self._operation = defer.Deferred()
        self._carry_out(outputs)
        return operation

    def _carry_out(self, outputs: list[Output]) -> None:
        outcome: Ready | Finished | Failed | Close | None = None
        for output in outputs:
            if isinstance(output, bytes):
                self.transport.write(output)
            elif isinstance(output, StartTLS):
                # Anything the server pipelined behind its 220 is not part of the TLS
                # session (the client-side mirror of CVE-2011-0411).
                self.clearLineBuffer()
                self.transport.startTLS(OpportunisticTLS(self.peer.mx))
            elif isinstance(output, Abort):
                self._close(abort=True)
            else:
                if isinstance(output, Close):
                    self._close(abort=False)
                outcome = output
        self._rearm()
        # Last: whoever awaited the operation may go on at once, with the timer already right.
        if outcome is not None:
            self._settle(outcome)

    def _settle(self, outcome: Ready | Finished | Failed | Close) -> None:
        if isinstance(outcome, Ready):
            self._established()
        operation, self._operation = self._operation, None
        if operation is None:
            return
        if isinstance(outcome, Failed):
            operation.errback(outcome.error)
        else:
            operation.callback(outcome.results if isinstance(outcome, Finished) else None)

    def _established(self) -> None:
        self.peer.capabilities = self.session.capabilities
        if not self.session.tls:
            return
        self.peer.tls = True
        connection = getattr(self.transport, "getHandle", lambda: None)()
        if isinstance(connection, SSL.Connection):
            self.peer.tls_version = connection.get_protocol_version_name()
            self.peer.cipher = connection.get_cipher_name()

    def _close(self, abort: bool) -> None:
        if self._closed:
            return
        self._closed = True
        if abort:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    def _rearm(self) -> None:
        """One deadline per connection rather than one per reply (a busy session waits for
        five replies per message), moved to the timeout of the step now awaited."""
        step = self.session.expecting
        if step is self._timed:
            return
        self._timed = step
        if step is None:
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None
        elif self._timer is not None and self._timer.active():
            self._timer.reset(step.timeout)
        else:
            self._timer = self.clock.callLater(step.timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = self._timed = None
        self._carry_out(self.session.timed_out())


class _ClientFactory(protocol.ClientFactory):
    noisy = False  # one per connection: "Starting factory" lines would flood the log

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.result = connection.opened

    def buildProtocol(self, addr: Any) -> ClientConnection:
        self.connection.factory = self
        return self.connection

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        if not self.result.called:
            self.result.errback(reason)


async def connect(reactor: Any, clock: IReactorTime, peer: Peer, session: ClientSession,
                  timeout: float) -> ClientConnection:
    """Open a TCP connection to ``peer`` for ``session`` (its deadlines on ``clock``);
    raises SessionError("connect", ...)."""
    factory = _ClientFactory(ClientConnection(session, peer, clock))
    connector = reactor.connectTCP(peer.ip, peer.port, factory, timeout=timeout)
    try:
        return await factory.result
    except Exception as exc:
        connector.disconnect()
        raise SessionError("connect", f"{peer.mx}[{peer.ip}]:{peer.port}: {_describe(exc)}") from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, error.TimeoutError | defer.TimeoutError):
        return "connection timed out"
    return str(exc) or type(exc).__name__
