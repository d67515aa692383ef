"""A byte budget: how much of the large request bodies may be in memory at once.

A 49 MB ``/v1/send`` is held several times over while it is decoded, composed,
checked and stored (JSON text, the parsed string, the message, its prepared
copy). Four at once peaked at gigabytes. Each large request therefore takes its
body's size from the budget before its body is read, and gives it back once
its message is stored; the others wait their turn in order of arrival. Small
requests do not wait at all (they take nothing).
"""

from __future__ import annotations

from collections import deque

from twisted.internet import defer


class ByteBudget:
    """A weighted semaphore over bytes, first come first served. A request larger than the whole
    budget still runs, alone, so that every request the size limits allow can be served."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._queue: deque[tuple[int, defer.Deferred[None]]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def acquire(self, size: int) -> defer.Deferred[None]:
        """Fires when ``size`` bytes are ours; cancelling it leaves the queue."""
        if not self._queue and self._fits(size):
            self.held += size
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred(self._leave)
        self._queue.append((size, waiter))
        return waiter

    def release(self, size: int) -> None:
        self.held -= size
        # In order of arrival: a big request at the head is not overtaken by small ones for ever.
        while self._queue and self._fits(self._queue[0][0]):
            size, waiter = self._queue.popleft()
            self.held += size
            waiter.callback(None)

    def _fits(self, size: int) -> bool:
        return self.held == 0 or self.held + size <= self.limit

    def _leave(self, waiter: defer.Deferred[None]) -> None:
        self._queue = deque(entry for entry in self._queue if entry[1] is not waiter)
        self.release(0)  # those behind it may fit now
