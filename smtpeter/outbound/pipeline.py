"""The outbound pipeline: from a stored message and its leased recipients to what goes on the wire.

The scheduler asks for ``jobs``: the message is prepared once (per-message
steps, kept while the scheduler holds the message and a little after, however
many recipients it has), then per-recipient steps run where they apply, and
recipients whose outbound envelope and bytes come out identical share one
job (one transaction). Plain mail keeps one transaction for up to 100
recipients; tracked mail, and mail with a VERP return path (an envelope
sender per recipient), goes one recipient per transaction.

The message's sender authentication (``SenderAuth``: DKIM keys, bounce domain,
tracking host) comes from the ``authority`` once per message, with its
preparation, and goes into every job made of it. If the authority fails, the
preparation fails (the recipients are tried again later): mail is never sent
unsigned because a lookup failed.

The delivery client asks ``for_peer`` once it knows the receiving server:
the 7-bit form is decided there (for a peer without 8BITMIME), before the
last steps (DKIM signing), so the bytes the last step returns are exactly
the bytes that server stores.

Steps run in ``Workers``, never on the reactor thread, and only when their
cheap ``needed`` test says there is work. A step that fails is skipped (the
message goes on without it); when the workers themselves fail, per-message
and per-recipient steps are skipped too, while ``for_peer`` fails, so the
transaction is tried again later rather than sent unsigned or undeliverable.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from smtpeter.attempt import Capabilities
from smtpeter.delivery.client_session import NotForThisPeer, Transaction
from smtpeter.envelope import Recipient
from smtpeter.mime.header import author
from smtpeter.outbound import steps as outbound_steps
from smtpeter.outbound import wire
from smtpeter.outbound.job import OutboundJob, PreparedMessage, SenderAuth, StepSettings
from smtpeter.outbound.steps import Step
from smtpeter.outbound.workers import Workers
from smtpeter.storage.models import StoredMessage

log = Logger()

MAX_HEADER = 256 * 1024  # where the From of a message is looked for

# Prepared messages nobody holds any more, that steps changed, are kept up to this many
# bytes, newest first: the next claim for a big mailing's recipients (behind a busy
# destination) comes soon.
RECENT_BYTES = 64 * 1024 * 1024

# How a message's sender domain authenticates it (None: no approved sender domain).
Authority = Callable[[StoredMessage], Awaitable[SenderAuth | None]]


@dataclass
class _Entry:
    """One message's preparation: done, or the callers waiting for it."""

    holders: int = 0
    prepared: PreparedMessage | None = None
    waiting: list[defer.Deferred] = field(default_factory=list)
    working: bool = False


@dataclass(frozen=True)
class Batch:
    """One job, the positions (in the recipients ``jobs`` was given) of its recipients, and
    the steps that failed on it (skipped: the job went on without them)."""

    job: OutboundJob
    positions: tuple[int, ...]
    warnings: tuple[str, ...] = ()


class Pipeline:
    def __init__(self, workers: Workers, settings: StepSettings, message_steps: Sequence[Step] | None = None,
                 recipient_steps: Sequence[Step] | None = None,
                 last_steps: Sequence[Step] | None = None, authority: Authority | None = None) -> None:
        """The steps of ``outbound/steps.py``, unless others are given; ``authority`` gives each
        message's ``SenderAuth`` (without it no job has one: nothing is signed, no VERP)."""
        self.workers = workers
        self.settings = settings
        self.authority = authority
        self.message_steps = tuple(outbound_steps.MESSAGE_STEPS if message_steps is None else message_steps)
        self.recipient_steps = tuple(outbound_steps.RECIPIENT_STEPS if recipient_steps is None
                                     else recipient_steps)
        self.last_steps = tuple(outbound_steps.LAST_STEPS if last_steps is None else last_steps)
        self._entries: dict[str, _Entry] = {}
        self._recent: OrderedDict[str, PreparedMessage] = OrderedDict()
        self._recent_bytes = 0

    # -- per message, once ---------------------------------------------------------------------

    def hold(self, message: StoredMessage) -> None:
        """The scheduler holds ``message`` for a job: its preparation is kept until ``release``."""
        entry = self._entries.setdefault(message.id, _Entry())
        entry.holders += 1
        if entry.prepared is None and message.id in self._recent:
            entry.prepared = self._forget_recent(message.id)

    def release(self, message_id: str) -> None:
        self._entries[message_id].holders -= 1
        self._drop_if_unheld(message_id)

    def _drop_if_unheld(self, message_id: str) -> None:
        entry = self._entries[message_id]
        if entry.holders > 0 or entry.working:
            return
        del self._entries[message_id]
        if entry.prepared is not None:
            self._remember(message_id, entry.prepared)

    def prepared(self, message: StoredMessage) -> defer.Deferred:
        """The message after its per-message steps: made once while it is held, then shared."""
        entry = self._entries.get(message.id)
        if entry is None and message.id in self._recent:
            return defer.succeed(self._recent[message.id])
        entry = entry or _Entry()
        if entry.prepared is not None:
            return defer.succeed(entry.prepared)
        waiter: defer.Deferred = defer.Deferred()
        entry.waiting.append(waiter)
        if not entry.working:
            entry.working = True
            work = defer.Deferred.fromCoroutine(self._prepare(message))
            work.addBoth(self._prepared_done, message.id, entry)
        return waiter

    def _prepared_done(self, result: PreparedMessage | Failure, message_id: str, entry: _Entry) -> None:
        entry.working = False
        waiting, entry.waiting = entry.waiting, []
        if self._entries.get(message_id) is entry:
            if isinstance(result, PreparedMessage):  # after a failure the next caller tries again
                entry.prepared = result
            self._drop_if_unheld(message_id)  # it may have been released while it was made
        for waiter in waiting:
            waiter.errback(result) if isinstance(result, Failure) else waiter.callback(result)

    async def _prepare(self, message: StoredMessage) -> PreparedMessage:
        auth = None if self.authority is None else await self.authority(message)
        needed = [step for step in self.message_steps if step.needed(message, message.mime)]
        if not needed:
            return PreparedMessage(message, message.mime, auth=auth)
        try:
            made: PreparedMessage = await self.workers.run(outbound_steps.run_message_steps, needed,
                                                           _light(message), message.mime, self.settings)
        except Exception as exc:
            return PreparedMessage(message, message.mime, (f"every per-message step: {exc!r}",), auth)
        return PreparedMessage(message, made.content, made.warnings, auth)

    def _remember(self, message_id: str, prepared: PreparedMessage) -> None:
        if prepared.content is prepared.message.mime:
            return  # nothing was done: doing nothing again costs nothing
        prepared = dataclasses.replace(prepared, message=_light(prepared.message))
        self._recent[message_id] = prepared
        self._recent_bytes += len(prepared.content)
        while self._recent_bytes > RECENT_BYTES:
            self._forget_recent(next(iter(self._recent)))

    def _forget_recent(self, message_id: str) -> PreparedMessage:
        prepared = self._recent.pop(message_id)
        self._recent_bytes -= len(prepared.content)
        return prepared

    # -- per recipient ---------------------------------------------------------------------------

    async def jobs(self, message: StoredMessage, recipients: Sequence[Recipient],
                   recipient_ids: Sequence[str]) -> list[Batch]:
        """The jobs (one per transaction) that deliver ``message`` to ``recipients`` (whose public
        message ids are ``recipient_ids``)."""
        prepared: PreparedMessage = await self.prepared(message)
        envelope = message.envelope.with_recipients(recipients)
        if envelope.sender is None and message.source == "api":
            # REST mail without an envelope leaves from its From address: receivers take the null
            # sender for a bounce (only DSNs use it). Stored without one, it still gets no DSNs.
            envelope = dataclasses.replace(envelope, sender=author(bytes(prepared.content[:MAX_HEADER])))
        needed = [step for step in self.recipient_steps if step.needed(prepared)]
        if not needed:
            job = OutboundJob(message, envelope, prepared.content, tuple(recipient_ids), prepared.auth)
            return [Batch(job, tuple(range(len(recipients))), prepared.warnings)]
        light = _light(message)
        singles = [OutboundJob(light, envelope.with_recipients([r]), prepared.content, (i,), prepared.auth)
                   for r, i in zip(recipients, recipient_ids, strict=True)]
        try:
            if all(step.light for step in needed):
                done, failed = outbound_steps.run_recipient_steps(needed, singles, self.settings)
            else:
                done, failed = await self.workers.run(outbound_steps.run_recipient_steps, needed, singles,
                                                      self.settings)
        except Exception as exc:
            done, failed = singles, [f"every per-recipient step: {exc!r}"]
        warnings = (*prepared.warnings, *failed)
        return [dataclasses.replace(batch, job=dataclasses.replace(batch.job, message=message),
                                    warnings=warnings)
                for batch in batched(done)]

    # -- per receiving server ----------------------------------------------------------------------

    async def for_peer(self, transaction: Transaction, capabilities: Capabilities) -> Transaction:
        """``transaction`` in the form this peer gets: 7-bit where it must be, then the last steps.

        Raises NotForThisPeer when the peer cannot take the message at all.
        """
        job = transaction.job
        if not isinstance(job, OutboundJob):  # not made by the pipeline (a test's own transaction)
            return transaction
        eight_bit_ok = capabilities.eightbitmime or job.content.isascii()
        last = [step for step in self.last_steps if step.needed(job)]
        if eight_bit_ok and not last:
            return transaction
        sendable = dataclasses.replace(job, message=_light(job.message))
        try:
            content, warnings = await self.workers.run(outbound_steps.wire_form, sendable, eight_bit_ok, last,
                                                       self.settings)
        except wire.CannotDowngrade as exc:
            raise NotForThisPeer("5.6.3", "the receiving server lacks 8BITMIME and the message cannot be "
                                          f"converted: {exc}") from None
        for warning in warnings:
            log.warn("message {id}: a last step failed and was skipped: {warning}", id=job.message.id,
                     warning=warning)
        return transaction.with_message(content)


def batched(jobs: Sequence[OutboundJob]) -> list[Batch]:
    """One-recipient jobs with the same outbound envelope and bytes merged, in first-seen order."""
    merged: dict[tuple[object, bytes], tuple[OutboundJob, list[int]]] = {}
    for position, job in enumerate(jobs):
        key = (job.envelope.with_recipients(()), job.content)
        if key in merged:
            first, positions = merged[key]
            merged[key] = (dataclasses.replace(
                first, envelope=first.envelope.with_recipients([*first.recipients, *job.recipients]),
                recipient_ids=(*first.recipient_ids, *job.recipient_ids)), [*positions, position])
        else:
            merged[key] = (job, [position])
    return [Batch(job, tuple(positions)) for job, positions in merged.values()]


def _light(message: StoredMessage) -> StoredMessage:
    """The message without its bytes, for a worker that is given the bytes to work on anyway."""
    return dataclasses.replace(message, mime=b"")
