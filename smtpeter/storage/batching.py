"""Group commit: writes from many callers share one transaction (and one fsync)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from smtpeter.storage.db import Conflict, Statement, Tables


class Batcher:
    """Collects writes from many callers and commits them together.

    While one commit (and its fsync) is in flight, new items wait in
    ``_pending``; the next commit takes all of them. Throughput then grows with
    concurrency instead of being capped at one fsync per item. ``build`` turns
    a batch of items into the statements of one transaction; ``after_commit`` is
    told after each commit.
    """

    def __init__(self, tables: Tables, build: Callable[[list[Any]], list[Statement]],
                 size: Callable[[Any], int], max_batch: int = 500, max_bytes: int = 16 * 1024 * 1024,
                 durable: Callable[[list[Any]], bool] = lambda batch: True,
                 after_commit: Callable[[], None] = lambda: None) -> None:
        # The database and clock are looked up on ``tables`` at each use: tests swap them.
        self._tables = tables
        self._durable = durable
        self._build = build
        self._size = size
        self._after_commit = after_commit
        self._max_batch = max_batch
        # A few big messages make a transaction big enough: PostgreSQL gets each
        # batch as one query text, bytes hex-encoded.
        self._max_bytes = max_bytes
        self._pending: list[tuple[Any, Any, defer.Deferred]] = []
        self._in_flight = 0
        self._scheduled = False
        self._idle_waiters: list[defer.Deferred] = []
        self.commits = 0
        self.committed = 0

    def add(self, item: Any, result: Any) -> defer.Deferred:
        """Queue ``item``; the Deferred fires with ``result`` once it is committed."""
        d: defer.Deferred = defer.Deferred()
        self._pending.append((item, result, d))
        self._schedule()
        return d

    def _schedule(self) -> None:
        if self._scheduled or not self._pending:
            return
        if self._in_flight >= self._tables.db.max_concurrent_writes:
            return
        self._scheduled = True
        # callLater(0) lets every caller that is ready in this reactor turn join the batch.
        self._tables.clock.callLater(0, self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        count, total = 0, 0
        for item, _, _ in self._pending[: self._max_batch]:
            total += self._size(item)
            if count and total > self._max_bytes:
                break
            count += 1
        batch, self._pending = self._pending[:count], self._pending[count:]
        if not batch:
            return
        self._in_flight += 1
        d = defer.Deferred.fromCoroutine(self._commit(batch))
        d.addBoth(self._done)
        self._schedule()

    def _done(self, _: object) -> None:
        self._in_flight -= 1
        self._schedule()
        if not self._in_flight and not self._pending:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def idle(self) -> defer.Deferred:
        """Fires once everything handed in so far has been committed (or failed)."""
        if not self._in_flight and not self._pending:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._idle_waiters.append(d)
        return d

    async def _commit(self, batch: list[tuple[Any, Any, defer.Deferred]]) -> None:
        try:
            items = [item for item, _, _ in batch]
            await self._tables.db.transaction(self._build(items), durable=self._durable(items))
        except Conflict:
            if len(batch) == 1:
                batch[0][2].errback()
                return
            # One bad item must not fail the others: commit them one by one.
            for entry in batch:
                await self._commit([entry])
            return
        except Exception:
            for _, _, d in batch:
                d.errback()
            return
        self.commits += 1
        self.committed += len(batch)
        self._after_commit()
        for _, result, d in batch:
            d.callback(result)
