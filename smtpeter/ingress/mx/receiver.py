"""The Twisted edge of mx.listen: the submission server's session and adapter, another policy.

The same sans-I/O session (framing, no bare CR/LF, size limits, timeouts,
STARTTLS) runs with AUTH off and ``InboundPolicy`` deciding each RCPT. A
message is stored durably (``Storage.store_inbound``) before its ``250``; the
processor (``smtpeter/bounces/processor.py``) is woken to handle it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from smtpeter.envelope import Envelope
from smtpeter.events.metrics import Metrics
from smtpeter.ids import new_id
from smtpeter.ingress.mx.policy import InboundPolicy
from smtpeter.ingress.smtp.limits import ConnectionLimits
from smtpeter.ingress.smtp.server_connection import SMTPServerFactory, received_header
from smtpeter.ingress.smtp.server_session import Client, SessionPolicy, reply
from smtpeter.storage import Storage, StorageError
from smtpeter.storage.inbound import InboundRecipient

log = Logger()

# How often the bounce domains are read again when nothing said they changed (other nodes, the CLI).
REFRESH_INTERVAL = 60.0


class BounceDomains:
    """The bounce domains of every approved sender domain, kept in memory for the RCPT check."""

    def __init__(self, storage: Storage, clock: IReactorTime) -> None:
        self.storage = storage
        self.clock = clock
        self._domains: frozenset[str] = frozenset()
        self._timer: Any = None
        self._refreshing: defer.Deferred | None = None

    def __contains__(self, domain: object) -> bool:
        return domain in self._domains

    async def refresh(self) -> None:
        settings = await self.storage.all_sender_domains()
        self._domains = frozenset(s.bounces.lower() for s in settings if s.approved)

    async def start(self) -> None:
        await self.refresh()
        self._schedule(REFRESH_INTERVAL)

    def changed(self) -> None:
        """A sender domain changed: read them again soon (many changes, one read)."""
        if self._refreshing is None:
            self._schedule(0)

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _schedule(self, delay: float) -> None:
        self.stop()
        self._timer = self.clock.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._refreshing = defer.Deferred.fromCoroutine(self.refresh())

        def done(_: Any) -> None:
            self._refreshing = None
            self._schedule(REFRESH_INTERVAL)

        # A failed read keeps the domains we have; the next tick tries again.
        self._refreshing.addErrback(lambda f: log.warn("bounce domains: {e}", e=f.getErrorMessage()))
        self._refreshing.addBoth(done)


class InboundFactory(SMTPServerFactory):
    """mx.listen: no AUTH, no relay; each accepted message stored, then processed."""

    def __init__(self, session_policy: SessionPolicy, inbound: InboundPolicy, storage: Storage,
                 received: Callable[[], None], tls_context: Any, clock: Any, *,
                 implicit_tls: bool = False, limits: ConnectionLimits | None = None,
                 timeout: float = 300.0, data_timeout: float = 600.0, metrics: Metrics | None = None) -> None:
        super().__init__(session_policy, None, None, tls_context, clock, implicit_tls=implicit_tls,
                         limits=limits, timeout=timeout, data_timeout=data_timeout)
        self.inbound = inbound
        self.storage = storage
        self.received = received
        self.metrics = metrics or Metrics()

    async def accept(self, client: Client, envelope: Envelope, data: bytes) -> bytes:
        """Store the message (every RCPT already passed the policy) and answer the final dot."""
        routes = [self.inbound.route(r.address) for r in envelope.recipients]
        recipients = [r for r in routes if isinstance(r, InboundRecipient)]
        if len(recipients) != len(routes):  # the policy changed under the session: ask again later
            return reply(451, "4.3.0", "Recipients changed while we were talking; try again")
        message_id = new_id()
        trace = received_header(self.policy.hostname, client, [r.address for r in recipients],
                                envelope.smtputf8)
        try:
            await self.storage.store_inbound(message_id, client.address, client.helo, client.tls,
                                             envelope.sender or "", recipients, trace + data)
        except StorageError as exc:
            log.error("Could not store a received message: {exc}", exc=exc)
            return reply(451, "4.3.0", "Temporary storage failure, message not accepted; try again later")
        log.info("{line}", line=f"received {message_id} from=<{envelope.sender}> size={len(data)} "
                                f"client={client.address} to={','.join(r.address for r in recipients)}")
        self.metrics.count("smtpeter_received_total")
        self.received()
        return reply(250, "2.0.0", f"Ok, received as {message_id}")
