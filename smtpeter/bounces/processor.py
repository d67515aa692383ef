"""The stage after mx.listen's queue: received messages become events, forwards and reports.

The receiver (``smtpeter/ingress/mx/``) stores each message before its
``250`` and wakes this processor. The processor leases the messages that are
due (``Storage.claim_inbound``), classifies each off the reactor thread, and
commits in one transaction what it makes of it: the events of each recipient
it is about (``returned.py``), the forward to the customer's envelope, a DMARC
aggregate report's rows, and the received message marked done. A crash
anywhere leaves the message due again, so nothing is lost or recorded twice.

Which of our recipients a message is about comes from the VERP address it was
sent to (its MAC checked at RCPT); mail to the DMARC report address or to
postmaster is matched by the VERP return path it quotes, if any. Mail that
names none of our messages is kept (state done, kind "unattributed") for an
operator to read, with no event.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from smtpeter.bounces.pipeline import Report
from smtpeter.bounces.returned import returned
from smtpeter.events.metrics import Metrics
from smtpeter.ingress.mx.policy import InboundPolicy
from smtpeter.pause import Pause
from smtpeter.storage import Storage, StorageError
from smtpeter.storage.db import NotFound, Statement
from smtpeter.storage.events import event_row, insert_events
from smtpeter.storage.inbound import DONE, FAILED, InboundMessage, InboundRecipient

log = Logger()

# Received messages processed per transaction.
BATCH = 20
# How long a claimed message is ours; a node that dies gives it back after this.
LEASE = 300.0
# Messages stored by another node (or left by a crash) are found by polling this often.
POLL_INTERVAL = 30.0
# Processing that fails (a database hiccup, a bug) is retried this much later, at most this often.
RETRY_AFTER = 60.0
MAX_ATTEMPTS = 20
# What each kind of received message counts as, once it is recorded about a recipient of ours.
_COUNTERS = {"bounce": "smtpeter_bounces_received_total", "undefined": "smtpeter_bounces_received_total",
             "response": "smtpeter_responses_received_total", "abuse": "smtpeter_complaints_received_total"}


@dataclass(frozen=True)
class ReportResult:
    """A DMARC aggregate report's place in storage: its account, rows and summary."""

    account_id: str | None
    statements: Sequence[Statement]
    summary: dict[str, Any]


# Reads a message sent to the DMARC report address; None when it is no aggregate report.
ReportHandler = Callable[[InboundMessage], Awaitable[ReportResult | None]]
Classifier = Callable[[bytes], Awaitable[Report]]


class InboundProcessor:
    def __init__(self, storage: Storage, policy: InboundPolicy, classify: Classifier, clock: IReactorTime,
                 owner: str,
                 reports: ReportHandler | None = None,
                 queued: Callable[[], None] = lambda: None, metrics: Metrics | None = None) -> None:
        self.storage = storage
        self.policy = policy  # mx.listen's: which addresses are VERP return paths of ours
        self.classify = classify
        self.clock = clock
        self.owner = owner
        self.reports = reports
        self.queued = queued  # forwards were queued: wake delivery
        self.metrics = metrics or Metrics()
        self._loop: defer.Deferred | None = None
        self._stopping = False
        self._woken = False
        self._sleep = Pause(clock)

    def start(self) -> None:
        self._stopping = False
        self._loop = defer.Deferred.fromCoroutine(self._run())

    async def stop(self) -> None:
        self._stopping = True
        self._end_pause()
        if self._loop is not None:
            await self._loop

    def wake(self) -> None:
        """A message was stored: process it now."""
        self._woken = True
        self._end_pause()

    async def process_due(self) -> int:
        """Process the received messages that are due, a batch; return how many were claimed."""
        claimed = await self.storage.claim_inbound(self.owner, BATCH, LEASE)
        statements: list[Statement] = []
        forwarded = False
        kinds: list[str] = []
        for message in claimed:
            try:
                made, forwards, kind = await self._process(message)
            except Exception as exc:  # one bad message must not stop the others
                await self._failed(message, exc)
                continue
            statements += made
            forwarded = forwarded or forwards
            kinds.append(kind)
        if statements:
            await self.storage.commit_inbound(statements)
            if forwarded:
                self.queued()
        for kind in kinds:
            counter = _COUNTERS.get(kind)
            if counter:
                self.metrics.count(counter)
        return len(claimed)

    async def _run(self) -> None:
        while not self._stopping:
            self._woken = False
            try:
                if await self.process_due():
                    continue
            except StorageError as exc:
                log.warn("received mail: {exc}; trying again", exc=exc)
            except Exception:
                log.failure("received mail: processing failed; trying again")
            await self._pause()

    async def _pause(self) -> None:
        if not (self._stopping or self._woken):
            await self._sleep.wait(POLL_INTERVAL)

    def _end_pause(self) -> None:
        self._sleep.end()

    async def _failed(self, message: InboundMessage, exc: Exception) -> None:
        if message.attempts >= MAX_ATTEMPTS:
            log.error("received mail {id}: given up after {n} attempts: {exc}", id=message.id,
                      n=message.attempts, exc=exc)
            await self.storage.commit_inbound([self.storage.inbound_processed(
                message.id, FAILED, "undefined", None, {"error": str(exc)[:500]})])
            return
        log.warn("received mail {id}: {exc}; trying again later", id=message.id, exc=exc)
        await self.storage.retry_inbound(message.id, self.clock.seconds() + RETRY_AFTER)

    async def _process(self, message: InboundMessage) -> tuple[list[Statement], bool, str]:
        """The statements that record what ``message`` is, whether it forwards anything, and its kind."""
        routes = {r.route for r in message.recipients}
        if "report" in routes and self.reports is not None:
            found = await self.reports(message)
            if found is not None:
                closing = self.storage.inbound_processed(message.id, DONE, "dmarc", found.account_id,
                                                         found.summary)
                return [*found.statements, closing], False, "dmarc"
        report = await self.classify(message.mime)
        named = [(r.address, r.recipient_id) for r in message.recipients
                 if r.route == "verp" and r.recipient_id]
        if not named:
            quoted = self._quoted_return_path(report)
            named = [quoted] if quoted else []
        now = self.clock.seconds()
        rows, forwards, about = [], [], []
        account_id = None
        for address, recipient_id in named:
            try:
                recipient = await self.storage.recipient(recipient_id)
                stored = await self.storage.message_content(recipient_id)
            except NotFound:
                continue  # the message was deleted since: nothing left to tell
            made = returned(report, message.id, message.mime, address, recipient, stored)
            rows += [event_row(e.account_id, e.message_id, e.address, e.type, now, e.data)
                     for e in made.events]
            if made.forward is not None:
                forwards.append(made.forward)
            account_id = account_id or stored.account_id
            about.append({"id": recipient_id, "events": [e.type for e in made.events],
                          "forwarded": made.forward.recipient_ids if made.forward else []})
        kind = report.kind if about else "unattributed"
        summary = {"kind": report.kind, "about": about,
                   "reasons": sorted({r.reason for r in report.recipients})}
        statements: list[Statement] = [insert_events(rows)] if rows else []
        if forwards:
            statements += self.storage.enqueue_statements(forwards)
        statements.append(self.storage.inbound_processed(message.id, DONE, kind, account_id, summary))
        return statements, bool(forwards), kind

    def _quoted_return_path(self, report: Report) -> tuple[str, str] | None:
        """The VERP address the report quotes as the original's return path, if it is ours."""
        for address in (report.original.envelope_sender, report.return_path):
            found = self.policy.route(address.strip("<>"))
            if isinstance(found, InboundRecipient) and found.route == "verp" and found.recipient_id:
                return address, found.recipient_id
        return None
