"""The Twisted edge of the SMTP server: framing, TLS, timeouts, connection limits.

All protocol decisions live in ``session.ServerSession``; this adapter only
splits the stream into lines or DATA and carries out the session's outputs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer, task
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

from smtpeter.envelope import Envelope, MessageOptions
from smtpeter.ingress.smtp.auth import ISMTPLogin
from smtpeter.ingress.smtp.data import DataReader
from smtpeter.ingress.smtp.limits import AuthThrottle, ConnectionLimits
from smtpeter.ingress.smtp.server_session import (
    MAX_LINE_LENGTH,
    Authenticate,
    BeginData,
    Client,
    Close,
    Deliver,
    ServerSession,
    SessionPolicy,
    StartTLS,
    reply,
)
from smtpeter.ingress.submission import Refused, Sender, Submission
from smtpeter.mime.header import date_now
from smtpeter.storage import StorageError

log = Logger()

# A wrong password waits this long before its 535, to slow down guessing.
AUTH_FAILURE_DELAY = 1.0
# The longest we let a client wait for an AUTH check or a commit before a 4xx.
STORAGE_DEADLINE = 60.0
# Unprocessed input we hold while a client is not reading our replies (or waits
# for a commit) before we stop reading its socket.
INPUT_LIMIT = 256 * 1024
# After we close, a client that does not read what we still send (or never
# finishes its TLS handshake) loses the connection this much later.
CLOSE_GRACE = 5.0


def queued_reply(ids: Sequence[str], recipients: Sequence[str]) -> bytes:
    """The 250 to DATA, naming one message id per recipient (as MailerQ does)."""
    lines = ["Ok, your message has been queued using the following identifiers:"]
    lines += [f"{mid} for {rcpt}" for mid, rcpt in zip(ids, recipients, strict=True)]
    return reply(250, "2.0.0", "\n".join(lines))


@implementer(IHandshakeListener)
class ServerConnection(LineReceiver, TimeoutMixin):
    MAX_LENGTH = MAX_LINE_LENGTH
    factory: SMTPServerFactory

    def __init__(self) -> None:
        self.session: ServerSession | None = None
        self._reader: DataReader | None = None
        self._peer = ""
        self._busy = False  # an AUTH check or a commit is in progress
        self._output_full = False  # the client is not reading our replies
        self._socket_paused = False
        self._gone = False
        self._counted = False  # holds a slot of the connection limits
        self._handshaking = False  # a TLS handshake has begun and not finished
        self._closing = False
        self._abort_timer: Any = None

    # -- connection ---------------------------------------------------------

    def connectionMade(self) -> None:
        factory = self.factory
        peer = self.transport.getPeer()
        self._peer = getattr(peer, "host", "") or "unknown"
        trusted = factory.is_trusted(self._peer)
        self.session = ServerSession(factory.policy, self._peer, tls=factory.implicit_tls, trusted=trusted)
        self._handshaking = factory.implicit_tls
        if hasattr(self.transport, "setTcpNoDelay"):
            self.transport.setTcpNoDelay(True)
        # A client that does not read our replies is not read either: its
        # pipelined commands cannot pile up replies in our memory.
        self.transport.registerProducer(self, True)
        refusal = factory.limits.admit(self._peer, trusted)
        if refusal is not None:
            self.session.closed = True
            self.transport.write(reply(421, "4.7.0", f"{factory.policy.hostname} {refusal}"))
            self._close(await_handshake=True)
            return
        self._counted = True
        self.setTimeout(factory.timeout)
        self._run(self.session.greeting())

    def handshakeCompleted(self) -> None:
        self._handshaking = False

    def connectionLost(self, reason: Any = None) -> None:
        self._gone = True
        self.setTimeout(None)
        if self._abort_timer is not None and self._abort_timer.active():
            self._abort_timer.cancel()
        if self._counted:
            self._counted = False
            self.factory.limits.release(self._peer)

    def timeoutConnection(self) -> None:
        if self.session is not None:
            self._run(self.session.timed_out())

    def _close(self, await_handshake: bool = False) -> None:
        """Close after what was written, within CLOSE_GRACE whatever the client does.

        The TLS layer will not start its shutdown while a producer is
        registered, and cannot send anything before its handshake is done.
        A session that ends while a handshake is pending (it timed out) is
        cut at once; a refusal at connect (``await_handshake``) gives the
        handshake the grace period, so the client can read why.
        """
        if self._closing:
            return
        self._closing = True
        self.setTimeout(None)
        self.transport.unregisterProducer()
        if self._handshaking and not await_handshake:
            self.transport.abortConnection()
            return
        self.transport.loseConnection()
        self._abort_timer = self.factory.clock.callLater(CLOSE_GRACE, self.transport.abortConnection)

    # -- flow control: IPushProducer for the transport, and our own waits ------

    def pauseProducing(self) -> None:
        self._output_full = True
        self._update_reading()

    def resumeProducing(self) -> None:
        self._output_full = False
        self._update_reading()

    def stopProducing(self) -> None:
        self._gone = True

    def _update_reading(self) -> None:
        """Handle input while neither a wait nor a full output buffer holds us back.

        While held, input only piles up in our buffer, up to INPUT_LIMIT; past
        that we stop reading the socket. (Stopping it at once would also stop a
        TLS handshake that our buffered greeting is waiting for.)
        """
        hold = self._busy or self._output_full
        if hold:
            self.paused = True
        elif self.paused and not self._gone:
            self.paused = False
            if self._socket_paused:
                self._socket_paused = False
                self.transport.resumeProducing()
            self.dataReceived(b"")  # the lines that arrived meanwhile

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self.paused and not self._socket_paused and len(self._buffer) > INPUT_LIMIT:
            self._socket_paused = True
            self.transport.pauseProducing()

    # -- input --------------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        self.resetTimeout()
        self._run(self.session.line(line))

    def lineLengthExceeded(self, line: bytes) -> None:
        self._run(self.session.line_too_long())

    def rawDataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        result = self._reader.feed(data)
        if result is None:
            return
        message, rest = result
        self._reader = None
        self.setTimeout(self.factory.timeout)
        # We are inside dataReceived: ``rest`` is buffered and read as lines
        # after we return, unless the session paused us to store the message.
        self.setLineMode(rest)
        self._run(self.session.data_received(message))

    # -- carrying out what the session decided ------------------------------

    def _run(self, outputs: list) -> None:
        for output in outputs:
            if isinstance(output, bytes):
                self.transport.write(output)
            elif isinstance(output, BeginData):
                policy = self.factory.policy
                self._reader = DataReader(policy.max_message_size, policy.max_line_length)
                self.setTimeout(self.factory.data_timeout)
                self.setRawMode()
            elif isinstance(output, StartTLS):
                # RFC 3207 §6: whatever the client sent behind STARTTLS in
                # plaintext must not be read as if it came over TLS.
                self.clearLineBuffer()
                self._handshaking = True
                self.transport.startTLS(self.factory.tls_context)
            elif isinstance(output, Close):
                self._close()
            elif isinstance(output, Authenticate):
                self._wait(self._authenticate(output),
                           lambda: self.session.authenticated(None, temporary_failure=True))
            elif isinstance(output, Deliver):
                self._wait(self._deliver(output), lambda: self.session.stored(reply(
                    451, "4.3.0", "Storage too slow, message not accepted; try again later")))

    def _wait(self, work: Any, too_slow: Any) -> None:
        """Stop reading until ``work`` is done, so later replies keep their order.

        ``work`` gets STORAGE_DEADLINE seconds; past that the client hears
        ``too_slow()`` (a 4xx) and whatever ``work`` still does is ignored.
        """
        self._busy = True
        self._update_reading()
        self.setTimeout(None)
        settled = False

        def finish(outputs: list) -> None:
            nonlocal settled
            if settled:
                return
            settled = True
            if deadline.active():
                deadline.cancel()
            self._busy = False
            if self._gone:
                return
            self.setTimeout(self.factory.timeout)
            self._run(outputs)
            self._update_reading()

        def failed(failure: Any) -> None:
            log.failure("SMTP session step failed", failure)
            if self.session is not None:
                self.session.closed = True
            finish([reply(421, "4.3.0", f"{self.factory.policy.hostname} Internal error, closing"), Close()])

        deadline = self.factory.clock.callLater(STORAGE_DEADLINE, lambda: finish(too_slow()))
        defer.Deferred.fromCoroutine(work).addCallbacks(finish, failed)

    async def _authenticate(self, request: Authenticate) -> list:
        session = self.session
        throttle = self.factory.auth_throttle
        username = request.credentials.username.decode("utf-8", "replace")
        if throttle.start(self._peer, username, session.trusted) is not None:
            return session.auth_throttled()
        succeeded: bool | None = None
        try:
            _, login, _ = await self.factory.portal.login(request.credentials, None, ISMTPLogin)
            succeeded = True
        except UnauthorizedLogin:
            succeeded = False
            log.info("AUTH failed: client={client} login={login}", client=self._peer, login=username[:256])
            await task.deferLater(self.factory.clock, AUTH_FAILURE_DELAY)
            return session.authenticated(None)
        except Exception as exc:
            log.warn("SMTP AUTH could not be checked: {exc!r}", exc=exc)
            return session.authenticated(None, temporary_failure=True)
        finally:
            throttle.finish(self._peer, username, succeeded, session.trusted)
        return session.authenticated(login)

    async def _deliver(self, request: Deliver) -> list:
        answer = await self.factory.accept(request.client, request.envelope, request.data)
        return self.session.stored(answer)


def received_header(hostname: str, client: Client, recipients: list[str], smtputf8: bool = False) -> bytes:
    """The trace field of RFC 5321 §4.4, with the protocol names of RFC 3848 and RFC 6531."""
    protocol = ("UTF8SMTP" if smtputf8 else "ESMTP") + ("S" if client.tls else "") + (
        "A" if client.login else "")
    recipient = f"\r\n\tfor <{recipients[0]}>" if len(recipients) == 1 else ""
    when = date_now()
    helo = "".join(c for c in client.helo if c.isprintable() and c not in "()\\")[:255]
    return (
        f"Received: from {helo} ([{client.address}])\r\n\tby {hostname} (smtpeter) "
        f"with {protocol}{recipient}; {when}\r\n"
    ).encode()


class SMTPServerFactory(ServerFactory):
    protocol = ServerConnection

    def __init__(
        self,
        policy: SessionPolicy,
        submission: Submission,
        portal: Portal | None,
        tls_context: Any,
        clock: Any,
        *,
        implicit_tls: bool = False,
        trusted_networks: Sequence[Any] = (),
        trusted_account: str | None = None,
        limits: ConnectionLimits | None = None,
        auth_throttle: AuthThrottle | None = None,
        timeout: float = 300.0,
        data_timeout: float = 600.0,
    ) -> None:
        self.policy = policy
        self.submission = submission
        self.portal = portal
        self.tls_context = tls_context
        self.clock = clock
        self.implicit_tls = implicit_tls
        self.trusted_networks = list(trusted_networks)
        self.trusted_account = trusted_account
        # Shared by every listener of the service: a client is one client on any port.
        self.limits = limits or ConnectionLimits(1000, 50)
        self.auth_throttle = auth_throttle or AuthThrottle(clock)
        self.timeout = timeout
        self.data_timeout = data_timeout

    def is_trusted(self, address: str) -> bool:
        if not self.trusted_networks or self.trusted_account is None:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.trusted_networks)

    def sender_for(self, client: Client) -> Sender | None:
        if client.login is not None:
            return Sender(client.login.account_id, client.login.options)
        if client.trusted and self.trusted_account:
            return Sender(self.trusted_account, MessageOptions())
        return None

    async def accept(self, client: Client, envelope: Envelope, data: bytes) -> bytes:
        """Run the submission checks and store; return the reply to the final dot."""
        sender = self.sender_for(client)
        if sender is None:  # the session refuses RCPT first; this is a second lock
            return reply(530, "5.7.0", "Authentication required")
        addresses = [r.address for r in envelope.recipients]
        try:
            ids = await self.submission.submit(
                sender, "smtp", envelope, data,
                trace=received_header(self.policy.hostname, client, addresses, envelope.smtputf8))
        except Refused as refusal:
            log.info("refused from=<{sender}> client={client}: {code} {status} {text}",
                     sender=envelope.sender, client=client.address, code=refusal.code,
                     status=refusal.status, text=refusal.text)
            return reply(refusal.code, refusal.status, refusal.text)
        except StorageError as exc:
            log.error("Could not store a message: {exc}", exc=exc)
            return reply(451, "4.3.0", "Temporary storage failure, message not accepted; try again later")
        except Exception:
            log.failure("Unexpected error while accepting a message")
            return reply(451, "4.3.0", "Temporary local problem, message not accepted; try again later")
        log.info("{line}", line=f"queued {','.join(ids)} from=<{envelope.sender}> size={len(data)} "
                                f"client={client.address} account={sender.account_id}")
        return queued_reply(ids, addresses)
