"""The durable, ordered event feed, as one consumer reads it.

Every recorded event has a position (``Position``, the feed's order). A
consumer (webhooks, statistics, the dashboard) reads the events after its own
saved position, handles them, and saves the position of the last one, in one
transaction with its own writes where it has any. After a restart it goes on
from the saved position: it misses no event, and no event whose effects were
committed comes to it again. (Effects outside the database, a webhook's
request, happen at least once: a crash between the effect and the save
repeats them.)

Storage keeps the order safe to follow on both backends: an event never
appears before a position a reader has passed (``Database.feed_horizon``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from smtpeter.pause import Pause
from smtpeter.storage import Storage, StorageError
from smtpeter.storage.db import Statement
from smtpeter.storage.models import Event, Position

log = Logger()

# Events recorded by another process (another node, the CLI), or held back on
# PostgreSQL behind a transaction still open, are found by polling this often.
POLL_INTERVAL = 5.0

# A service consumer reads again at most this often while events keep coming: under load each
# batch (one read, one transaction) carries many events instead of the few one commit wrote.
# A lone event after a quiet spell is read at once.
SERVICE_PACE = 0.25
# Events a consumer handles at most at once. The service's consumers all take this many, so that
# standing at one position they share one read (Storage.feed).
BATCH_SIZE = 2000

# Handles a batch of events; returns its own writes, committed with the batch's position.
Handler = Callable[[list[Event]], Awaitable[Sequence[Statement]]]


class Feed:
    """One consumer's place in the feed."""

    def __init__(self, storage: Storage, consumer: str, clock: IReactorTime, batch_size: int = BATCH_SIZE,
                 poll_interval: float = POLL_INTERVAL, pace: float = 0.0) -> None:
        self.storage = storage
        self.consumer = consumer
        self.clock = clock
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.pace = pace  # seconds between the reads of a busy feed
        self._position: Position | None = None  # the saved one, once read
        self._loop: defer.Deferred | None = None
        self._stopping = False
        self._unwatch: Callable[[], None] = lambda: None
        self._woken = False  # since the last read
        self._holding = False  # pausing on purpose (after a failure, or pacing): a wake does not end it
        self._sleep = Pause(clock)

    async def position(self) -> Position:
        """The saved position: the consumer is done with every event up to it."""
        if self._position is None:
            self._position = await self.storage.feed_position(self.consumer)
        return self._position

    async def read(self, limit: int | None = None) -> list[Event]:
        """The next events after the saved position, oldest first (none when there are none).

        Until ``commit`` moves the position on, reading again returns them again.
        """
        return await self.storage.feed(await self.position(), limit or self.batch_size)

    async def commit(self, position: Position, effects: Sequence[Statement] = ()) -> None:
        """Save that every event up to ``position`` is handled, with ``effects`` (the
        consumer's own writes) in the same transaction: both or neither."""
        await self.storage.save_feed_position(self.consumer, position, effects)
        self._position = max(position, await self.position())

    def start(self, handler: Handler) -> None:
        """Hand the events to ``handler`` in batches, in order, until ``stop``.

        A batch is read when this process records events (``Storage.watch_events``)
        and every ``poll_interval`` seconds. A batch that cannot be read, or that
        the handler fails on, comes again after a pause: nothing is skipped.
        """
        self._stopping = False
        self._unwatch = self.storage.watch_events(self.wake)
        self._loop = defer.Deferred.fromCoroutine(self._consume(handler))

    async def stop(self) -> None:
        """Stop reading; returns once the batch in hand (if any) is handled and saved."""
        self._stopping = True
        unwatch, self._unwatch = self._unwatch, lambda: None
        unwatch()
        self._end_pause()
        if self._loop is not None:
            await self._loop

    def wake(self) -> None:
        """Read now: there may be new events (after a failure, only once the pause is over)."""
        self._woken = True
        if not self._holding:
            self._end_pause()

    async def _consume(self, handler: Handler) -> None:
        while not self._stopping:
            self._woken = False
            try:
                events = await self.read()
                if not events:
                    await self._pause(self.poll_interval)
                    continue
                await self.commit(events[-1].position, await handler(events))
                if self.pace and len(events) < self.batch_size:
                    # Caught up: the events recorded meanwhile wait to make one batch.
                    await self._pause(self.pace, holding=True)
                continue
            except StorageError as exc:
                log.warn("feed {consumer}: {exc}; trying again", consumer=self.consumer, exc=exc)
            except Exception:
                log.failure("feed {consumer}: handling events failed; they come again",
                            consumer=self.consumer)
            # A failing handler or database is not tried again at the pace events come in.
            await self._pause(self.poll_interval, holding=True)

    async def _pause(self, seconds: float, holding: bool = False) -> None:
        """Wait ``seconds``, or until stopped; a wake ends the wait unless ``holding``."""
        if self._stopping or (self._woken and not holding):
            return
        self._holding = holding
        try:
            await self._sleep.wait(seconds)
        finally:
            self._holding = False

    def _end_pause(self) -> None:
        self._sleep.end()


class NotifyingFeed(Feed):
    """A feed that calls ``committed`` once a batch that had writes of its own is committed (the
    consumer's in-memory state may follow its writes only then)."""

    def __init__(self, *args: Any, committed: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._committed = committed

    async def commit(self, position: Position, effects: Sequence[Statement] = ()) -> None:
        await super().commit(position, effects)
        if effects:
            self._committed()
