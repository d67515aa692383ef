"""The scheduler: leases due recipients, has them delivered, records what happened.

It keeps a bounded window of work in memory (``delivery.window`` recipients);
the rest of the queue stays in storage, however large. Outcomes decide the
next step: delivered, failed for good, or retried on the schedule (or when
the remote server said to), until the message's delivery time runs out.
"""

from __future__ import annotations

import socket
from collections import Counter, defaultdict
from time import perf_counter
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger

from smtpeter.attempt import RecipientResult
from smtpeter.config import DeliveryConfig
from smtpeter.delivery.client_session import Transaction
from smtpeter.delivery.destination import HandBack
from smtpeter.delivery.dispatcher import Dispatcher
from smtpeter.events import dsn, model
from smtpeter.events.metrics import Metrics
from smtpeter.outbound.job import OutboundJob
from smtpeter.outbound.pipeline import Batch, Pipeline
from smtpeter.scheduler.retry import decide
from smtpeter.storage import Storage, StorageError
from smtpeter.storage.models import DELIVERED, EXPIRED, FAILED, QUEUED, Lease, Outcome, StoredMessage
from smtpeter.storage.suppressions import Suppression
from smtpeter.suppressions.registry import SuppressionList
from smtpeter.suppressions.registry import result as suppression_result

log = Logger()

CLAIM_BATCH = 500
# Recording an outcome is retried this often (1, 2, 4... s apart) before the lease is left to run out.
RECORD_ATTEMPTS = 6
POLL_INTERVAL = 1.0
# A wake-up waits this long so the messages queued meanwhile share one claim.
WAKE_DELAY = 0.02
# A claim that leaves busy destinations' domains out may read past their due rows
# (when the rest of the queue is large too). After one that came back short, the
# next waits this many times as long as it took: a deep backlog to one destination
# must not keep storage busy with claims that find nothing (each commit wakes us).
SHORT_CLAIM_REST = 4.0
class Scheduler:
    def __init__(self, storage: Storage, dispatcher: Dispatcher, config: DeliveryConfig, hostname: str,
                 clock: Any, node: str | None = None, metrics: Metrics | None = None, *,
                 pipeline: Pipeline, suppressions: SuppressionList | None = None) -> None:
        self.storage = storage
        # Recipients on their account's suppression list fail here, never tried (smtpeter/suppressions/).
        self.suppressions = suppressions
        self.metrics = metrics or Metrics()
        self.dispatcher = dispatcher
        self.pipeline = pipeline
        self.config = config
        self.hostname = hostname
        self.clock = clock
        self.node = node or f"{hostname}/{socket.gethostname()}"
        self.in_flight = 0
        self._leased: set[str] = set()  # recipient ids with a job in progress
        self._preparing: Counter[str] = Counter()  # domain -> its recipients in the outbound pipeline
        self._messages: dict[str, tuple[StoredMessage, int]] = {}
        self._held_bytes = 0
        self._filling = False
        self._fill_again = False
        self._rest_until = 0.0  # no claim before this (see SHORT_CLAIM_REST)
        # The last claim was held back by the window: a finished job makes room for more.
        self._window_full = False
        self._timer: Any = None
        self._wake_timer: Any = None
        self._running = False
        self._jobs: set[defer.Deferred] = set()
        # A full destination with room again, or a domain now looked up, may have due work.
        dispatcher.on_room = self.wake

    # -- life cycle -------------------------------------------------------------

    async def start(self) -> None:
        # Leases this node held before a restart are stale: make them due now.
        await self.storage.release_all(self.node)
        self._running = True
        self._tick()

    def stop(self) -> defer.Deferred:
        """Stop claiming; fires when the jobs in progress have recorded their outcomes."""
        self._running = False
        for timer in (self._timer, self._wake_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._filling = False
        return defer.DeferredList(list(self._jobs))

    def cancel(self) -> None:
        """Abandon the jobs still running (at shutdown); their leases stay with this node."""
        for job in list(self._jobs):
            job.cancel()

    def _tick(self) -> None:
        if not self._running:
            return
        self.wake()
        self._timer = self.clock.callLater(POLL_INTERVAL, self._tick)

    def wake(self) -> None:
        """Look for due work soon: mail was queued, room was made in the window or in a
        destination that was full."""
        if not self._running:
            return
        if self._filling:
            self._fill_again = True
            return
        self._filling = True
        delay = max(WAKE_DELAY, self._rest_until - self.clock.seconds())
        self._wake_timer = self.clock.callLater(delay, self._start_fill)

    def _start_fill(self) -> None:
        self._wake_timer = None
        defer.Deferred.fromCoroutine(self._fill()).addErrback(
            lambda f: log.failure("scheduler: claiming work failed", f))

    async def _fill(self) -> None:
        again = False
        try:
            while self._running:
                self._fill_again = False
                room = self.config.window - self.in_flight
                self._window_full = room <= 0 or self._held_bytes >= self.config.window_bytes
                if self._window_full:
                    return
                # At most what a destination with room can take: a claim never overfills one.
                limit = min(room, CLAIM_BATCH, self.dispatcher.claim_limit)
                # Recipients still in the outbound pipeline are no destination's backlog yet:
                # a domain with a claim's worth there waits too.
                held = [*self.dispatcher.held_domains(),
                        *(d for d, n in self._preparing.items() if n >= self.dispatcher.claim_limit)]
                started = perf_counter()
                try:
                    leases = await self.storage.claim(self.node, limit, self.config.lease, held)
                except StorageError as exc:
                    log.warn("scheduler: cannot claim work: {exc}", exc=exc)
                    return
                if held and len(leases) < limit:
                    self._rest_until = self.clock.seconds() + SHORT_CLAIM_REST * (perf_counter() - started)
                if leases:
                    await self._start_jobs(leases)
                if len(leases) < limit:
                    # All there was; a wake meanwhile claims again, after its delay.
                    again = self._fill_again
                    return
        finally:
            self._filling = False
            if again:
                self.wake()

    # -- jobs ---------------------------------------------------------------------

    async def _start_jobs(self, leases: list[Lease]) -> None:
        # A lease that ran out while its job still waits comes back in a claim:
        # one job per recipient, the renewed lease is ours anyway.
        leases = [lease for lease in leases if lease.id not in self._leased]
        self._leased.update(lease.id for lease in leases)
        self.in_flight += len(leases)
        wanted = {lease.message_id for lease in leases} - set(self._messages)
        try:
            fetched = await self.storage.messages(list(wanted)) if wanted else {}
            suppressed = await self._suppressed(leases)
        except StorageError as exc:
            log.warn("scheduler: cannot read messages: {exc}", exc=exc)
            self.in_flight -= len(leases)
            # The leases run out and the recipients come back by themselves, to be taken anew.
            self._leased.difference_update(lease.id for lease in leases)
            return
        groups: dict[tuple[str, str], list[Lease]] = defaultdict(list)
        for lease in leases:
            groups[(lease.message_id, lease.domain)].append(lease)
        now = self.clock.seconds()
        for (message_id, domain), group in groups.items():
            message = fetched.get(message_id) or self._messages.get(message_id, (None, 0))[0]
            if message is None:  # deleted meanwhile
                self.in_flight -= len(group)
                self._leased.difference_update(lease.id for lease in group)
                continue
            size = self.config.max_recipients_per_transaction
            for start in range(0, len(group), size):
                chunk = group[start:start + size]
                self._hold(message)
                barred = [lease for lease in chunk if lease.id in suppressed]
                if barred:
                    job = defer.Deferred.fromCoroutine(self._suppress(message, barred, suppressed))
                    self._jobs.add(job)
                    job.addBoth(self._job_done, job, message.id, [lease.id for lease in barred])
                    chunk = [lease for lease in chunk if lease.id not in suppressed]
                    if not chunk:
                        continue
                    self._hold(message)
                if now >= message.expires:
                    job = defer.Deferred.fromCoroutine(self._expire(message, chunk))
                else:
                    job = defer.Deferred.fromCoroutine(self._deliver(message, domain, chunk))
                self._jobs.add(job)
                job.addBoth(self._job_done, job, message.id, [lease.id for lease in chunk])

    def _hold(self, message: StoredMessage) -> None:
        _, count = self._messages.get(message.id, (message, 0))
        if not count:
            self._held_bytes += len(message.mime)
        self._messages[message.id] = (message, count + 1)
        self.pipeline.hold(message)

    def _job_done(self, result: Any, job: defer.Deferred, message_id: str, lease_ids: list[str]) -> None:
        self._jobs.discard(job)
        self.in_flight -= len(lease_ids)
        self._leased.difference_update(lease_ids)
        self.pipeline.release(message_id)
        message, count = self._messages[message_id]
        if count <= 1:
            del self._messages[message_id]
            self._held_bytes -= len(message.mime)
        else:
            self._messages[message_id] = (message, count - 1)
        if isinstance(result, defer.Failure) and not result.check(defer.CancelledError):
            log.failure("scheduler: a delivery job failed", result)
        if self._window_full:
            # Otherwise a claim now would find nothing the last one left: destinations wake
            # us when they have room, new mail when it is queued, retries at the next poll.
            self.wake()

    async def _deliver(self, message: StoredMessage, domain: str, leases: list[Lease]) -> None:
        """Deliver to ``leases``: one transaction per job the pipeline makes of them, side by side."""
        self._preparing[domain] += len(leases)
        try:
            batches = await self.pipeline.jobs(message, [lease.recipient for lease in leases],
                                               [lease.id for lease in leases])
        except defer.CancelledError:
            return  # shutting down: the lease stays, and the restart makes it due at once
        except Exception:
            log.failure("scheduler: the outbound pipeline failed on {id}", id=message.id)
            await self._record(message, leases, _internal_error(leases, "internal error preparing it"))
            return
        finally:
            self._preparing[domain] -= len(leases)
            if self._preparing[domain] <= 0:
                del self._preparing[domain]
        await self._warn(message, leases, batches)
        parts = [defer.Deferred.fromCoroutine(self._deliver_job(
            message, domain, [leases[position] for position in batch.positions], batch.job))
            for batch in batches]
        await defer.gatherResults(parts, consumeErrors=True)

    async def _warn(self, message: StoredMessage, leases: list[Lease], batches: list[Batch]) -> None:
        """A step that failed on a job is a warning event for its recipients: the mail went on."""
        warnings = [model.warning(message, leases[position], text)
                    for batch in batches for text in batch.warnings for position in batch.positions]
        if not warnings:
            return
        for event in warnings:
            log.warn("message {id}: a step failed and was skipped: {text}", id=event.message_id,
                     text=event.data["description"])
        try:
            await self.storage.record_events(warnings)
        except StorageError as exc:
            log.warn("scheduler: cannot record warnings: {exc}", exc=exc)

    async def _deliver_job(self, message: StoredMessage, domain: str, leases: list[Lease],
                           job: OutboundJob) -> None:
        transaction = Transaction(job.envelope, job.content, job=job)
        try:
            results = await self.dispatcher.deliver(domain, transaction)
        except HandBack as paused:
            await self._record_release(leases, paused.until)
            return
        except defer.CancelledError:
            return  # shutting down: the lease stays, and the restart makes it due at once
        except Exception:
            log.failure("scheduler: delivery to {domain} crashed", domain=domain)
            results = _internal_error(leases, "internal error during delivery")
        await self._record(message, leases, results)

    async def _suppressed(self, leases: list[Lease]) -> dict[str, Suppression]:
        """The suppression list's entries for the leased recipients on it, by lease id."""
        if self.suppressions is None:
            return {}
        addresses: dict[str, list[Lease]] = defaultdict(list)
        for lease in leases:
            addresses[lease.account_id].append(lease)
        found = {}
        for account_id, held in addresses.items():
            entries = await self.suppressions.suppressed(account_id, [lease.address for lease in held])
            found.update({lease.id: entries[lease.address] for lease in held if lease.address in entries})
        return found

    async def _suppress(self, message: StoredMessage, leases: list[Lease],
                        entries: dict[str, Suppression]) -> None:
        """Fail suppressed recipients at once, without a connection; no attempt is counted (as for
        mail that expires before one, hence ``expired=True``)."""
        results = [suppression_result(lease.address, entries[lease.id]) for lease in leases]
        await self._record(message, leases, results, expired=True)

    async def _expire(self, message: StoredMessage, leases: list[Lease]) -> None:
        results = [RecipientResult(lease.address, "expired", None, "4.4.7",
                                   "delivery time expired before the message could be delivered")
                   for lease in leases]
        await self._record(message, leases, results, expired=True)

    async def _record_release(self, leases: list[Lease], until: float) -> None:
        try:
            await self.storage.release(self.node, [lease.id for lease in leases], until)
        except StorageError as exc:
            log.warn("scheduler: cannot hand back leases: {exc}", exc=exc)

    async def _record(self, message: StoredMessage, leases: list[Lease], results: list[RecipientResult],
                      expired: bool = False) -> None:
        now = self.clock.seconds()
        outcomes = [self._outcome(message, lease, result, expired) for lease, result
                    in zip(leases, results, strict=True)]
        try:
            dsns = dsn.notices(message, leases, outcomes, results, now, self.hostname,
                               self.config.delay_warning)
        except Exception:
            # The outcome matters more than its report: record it without a DSN.
            log.failure("scheduler: cannot build the DSN for {id}", id=message.id)
            dsns = []
        for outcome in outcomes:
            # Formatted here: one field is much cheaper for the log observer than five.
            log.info("{line}", line=f"{outcome.recipient_id} to=<{outcome.address}> state={outcome.state} "
                                    f"{outcome.description or ''}")
        for attempt in range(RECORD_ATTEMPTS):
            try:
                await self.storage.record(self.node, outcomes, dsns)
            except StorageError as exc:
                log.warn("scheduler: cannot record delivery outcomes yet: {exc}", exc=exc)
                await task.deferLater(self.clock, 2.0**attempt)
                continue
            self._count(outcomes, len(dsns))
            if dsns:
                self.wake()  # the DSNs are new mail
            return
        # The leases run out and the recipients are tried again: a duplicate at
        # worst, never a loss.
        log.error("scheduler: gave up recording {n} outcomes", n=len(outcomes))

    def _count(self, outcomes: list[Outcome], dsns: int) -> None:
        counted = {DELIVERED: "smtpeter_delivered_total", QUEUED: "smtpeter_deferred_total",
                   FAILED: "smtpeter_failed_total", EXPIRED: "smtpeter_failed_total"}
        for outcome in outcomes:
            self.metrics.count(counted[outcome.state])
            if outcome.state == EXPIRED:
                self.metrics.count("smtpeter_expired_total")
        self.metrics.count("smtpeter_bounced_total", dsns)

    def _outcome(self, message: StoredMessage, lease: Lease, result: RecipientResult,
                 expired: bool) -> Outcome:
        verdict = decide(result, lease.attempts, self.clock.seconds(), message.expires,
                         self.config.retry_schedule, expired)
        event_type, event = model.attempt_outcome(message, lease, result, verdict.state, verdict.attempts,
                                                  verdict.next_attempt)
        return Outcome(lease.id, lease.account_id, lease.address, verdict.state, verdict.attempts,
                       verdict.next_attempt, event_type, event, result.code, result.status,
                       result.description, "expired" if verdict.state == EXPIRED else result.state,
                       lease.delay_notified)


def _internal_error(leases: list[Lease], text: str) -> list[RecipientResult]:
    """Our own fault, not the recipient's: retried on the schedule."""
    return [RecipientResult(lease.address, "internal", None, "4.3.0", text) for lease in leases]
