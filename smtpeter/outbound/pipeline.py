"""The outbound pipeline: from a stored message and its leased recipients to what goes on the wire.

The scheduler asks for ``jobs``: the message is prepared once (per-message
steps, cached while the scheduler holds the message, however many recipients
it has), then per-recipient steps run where they apply, and recipients whose
outbound envelope and bytes come out identical share one job (one
transaction). Plain mail keeps one transaction for up to 100 recipients;
tracked mail goes one recipient per transaction.

The delivery client asks ``for_peer`` once it knows the receiving server:
the 7-bit form is decided there (for a peer without 8BITMIME), before the
last steps (DKIM signing), so the bytes the last step returns are exactly
the bytes that server stores.

Steps run in ``Workers``, never on the reactor thread, and only when their
cheap ``needed`` test says there is work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from smtpeter.delivery.client_session import Capabilities, Transaction
from smtpeter.envelope import Recipient
from smtpeter.outbound import steps as outbound_steps
from smtpeter.outbound.job import OutboundJob, PreparedMessage
from smtpeter.outbound.steps import Step
from smtpeter.outbound.workers import Workers
from smtpeter.storage.models import StoredMessage

log = Logger()


class Pipeline:
    def __init__(self, workers: Workers, message_steps: Sequence[Step] | None = None,
                 recipient_steps: Sequence[Step] | None = None,
                 last_steps: Sequence[Step] | None = None) -> None:
        """The steps of ``outbound/steps.py``, unless others are given."""
        self.workers = workers
        self.message_steps = tuple(outbound_steps.MESSAGE_STEPS if message_steps is None else message_steps)
        self.recipient_steps = tuple(outbound_steps.RECIPIENT_STEPS if recipient_steps is None
                                     else recipient_steps)
        self.last_steps = tuple(outbound_steps.LAST_STEPS if last_steps is None else last_steps)
        # message id -> (its PreparedMessage, or the waiters while it is made; how many hold it)
        self._prepared: dict[str, tuple[Any, int]] = {}

    # -- per message, once ---------------------------------------------------------------------

    def hold(self, message: StoredMessage) -> None:
        """The scheduler holds ``message`` for a job: its preparation is kept until ``release``."""
        state, holders = self._prepared.get(message.id, (None, 0))
        self._prepared[message.id] = (state, holders + 1)

    def release(self, message_id: str) -> None:
        state, holders = self._prepared[message_id]
        if holders <= 1:
            del self._prepared[message_id]
        else:
            self._prepared[message_id] = (state, holders - 1)

    def prepared(self, message: StoredMessage) -> defer.Deferred:
        """The message after its per-message steps: computed once while it is held, then shared."""
        state, holders = self._prepared.get(message.id, (None, 0))
        if isinstance(state, PreparedMessage):
            return defer.succeed(state)
        waiter: defer.Deferred = defer.Deferred()
        if state is None:
            state = [waiter]
            if holders:
                self._prepared[message.id] = (state, holders)
            work = defer.Deferred.fromCoroutine(self._prepare(message))
            work.addBoth(self._prepared_done, message.id, state)
        else:
            state.append(waiter)
        return waiter

    def _prepared_done(self, result: Any, message_id: str, waiters: list[defer.Deferred]) -> None:
        entry = self._prepared.get(message_id)
        if entry is not None and entry[0] is waiters:
            # Kept for the next jobs of this message; after a failure the next one tries again.
            state = None if isinstance(result, defer.Failure) else result
            self._prepared[message_id] = (state, entry[1])
        for waiter in waiters:
            waiter.errback(result) if isinstance(result, defer.Failure) else waiter.callback(result)

    async def _prepare(self, message: StoredMessage) -> PreparedMessage:
        needed = [step for step in self.message_steps if step.needed(message, message.mime)]
        if not needed:
            return PreparedMessage(message, message.mime)
        prepared = await self.workers.run(outbound_steps.run_message_steps, needed, message, message.mime)
        for warning in prepared.warnings:
            log.warn("message {id}: a step failed and was skipped: {warning}", id=message.id, warning=warning)
        return prepared

    # -- per recipient ---------------------------------------------------------------------------

    async def jobs(self, message: StoredMessage, recipients: Sequence[Recipient]) -> list[OutboundJob]:
        """The jobs (one per transaction) that deliver ``message`` to ``recipients``, in their order."""
        prepared: PreparedMessage = await self.prepared(message)
        envelope = message.envelope.with_recipients(recipients)
        needed = [step for step in self.recipient_steps if step.needed(prepared)]
        if not needed:
            return [OutboundJob(message, envelope, prepared.content)]
        singles = [OutboundJob(message, envelope.with_recipients([r]), prepared.content) for r in recipients]
        done, warnings = await self.workers.run(outbound_steps.run_recipient_steps, needed, singles)
        for warning in warnings:
            log.warn("message {id}: a step failed and was skipped: {warning}", id=message.id, warning=warning)
        return batched(done)

    # -- per receiving server ----------------------------------------------------------------------

    async def for_peer(self, transaction: Transaction, capabilities: Capabilities) -> Transaction:
        """``transaction`` in the form this peer gets: 7-bit where it must be, then the last steps.

        Raises wire.CannotDowngrade when the peer cannot take the message at all.
        """
        job: OutboundJob | None = transaction.job
        if job is None:  # not made by the pipeline (a test's own transaction)
            return transaction
        eight_bit_ok = capabilities.eightbitmime or job.content.isascii()
        last = [step for step in self.last_steps if step.needed(job)]
        if eight_bit_ok and not last:
            return transaction
        content, warnings = await self.workers.run(outbound_steps.wire_form, job, eight_bit_ok, last)
        for warning in warnings:
            log.warn("message {id}: a step failed and was skipped: {warning}", id=job.message.id,
                     warning=warning)
        return transaction.with_message(content)


def batched(jobs: Sequence[OutboundJob]) -> list[OutboundJob]:
    """Jobs with the same outbound envelope sender and bytes merged into one, in first-seen order."""
    merged: dict[tuple[str | None, bytes], OutboundJob] = {}
    for job in jobs:
        key = job.key()
        first = merged.get(key)
        if first is None:
            merged[key] = job
        else:
            merged[key] = OutboundJob(first.message, first.envelope.with_recipients(
                [*first.recipients, *job.recipients]), first.content)
    return list(merged.values())
