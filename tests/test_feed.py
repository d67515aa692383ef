"""The event feed: every event once and in order, per consumer, across restarts, on both backends."""

from __future__ import annotations

import psycopg2
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from smtpeter.events.feed import Feed
from smtpeter.events.model import DELIVERY
from smtpeter.storage import Conflict, Storage
from smtpeter.storage.db import SQL
from smtpeter.storage.models import DELIVERED, Event, Outcome, Position
from tests.support.backends import BackendMixin, both_backends
from tests.support.clock import ShiftedClock
from tests.test_storage import new_message
from tests.test_workers import until


async def record_events(storage: Storage, account_id: str, messages: int) -> None:
    """Two recipients per message: an attempt event each, then (another transaction) a delivery."""
    for _ in range(messages):
        await storage.enqueue(new_message(account_id, recipients=2))
    leases = await storage.claim("node", limit=1000, lease=60)
    await storage.record("node", [Outcome(x.id, x.account_id, x.address, DELIVERED, 1, storage.now(),
                                          DELIVERY, {}) for x in leases])


async def every_position(storage: Storage) -> list[Position]:
    rows = await storage.db.query("SELECT xid, id FROM events ORDER BY xid, id")
    return [Position(*row) for row in rows]


FEED_READ = "AS this_transaction"  # in the SQL of a read of the feed (Events._read_feed)


def feed_reads(storage: Storage) -> list[tuple[str, tuple]]:
    """The SQL and parameters of every read of the feed ``storage`` makes from now on."""
    reads: list[tuple[str, tuple]] = []
    query = storage.db.query

    async def kept(sql: str, params: tuple = ()) -> list:
        if FEED_READ in sql:
            reads.append((sql, params))
        return await query(sql, params)
    storage.db.query = kept  # type: ignore[method-assign]
    return reads


async def read_to_the_end(feed: Feed) -> list[Event]:
    seen = []
    while events := await feed.read():
        seen += events
        await feed.commit(events[-1].position)
    return seen


class FeedSuite:
    async def test_every_event_once_in_order_across_a_restart(self) -> None:
        url = self.storage_url()
        storage = await self.open_storage(url)
        account = await storage.create_account("acme")
        await record_events(storage, account.id, 3)
        feed = Feed(storage, "webhooks", reactor, batch_size=5)
        seen = await feed.read()
        await feed.commit(seen[-1].position)
        unsaved = await feed.read()  # handled, but the process ends before it saves the position
        self.assertEqual(await feed.read(), unsaved)
        await storage.close()

        storage = await self.open_storage(url)
        await record_events(storage, account.id, 1)
        feed = Feed(storage, "webhooks", reactor, batch_size=5)
        self.assertEqual(await feed.position(), seen[-1].position)
        self.assertEqual(await feed.read(), unsaved)
        seen += await read_to_the_end(feed)
        self.assertEqual(len(seen), 16)
        self.assertEqual([e.position for e in seen], await every_position(storage))
        self.assertEqual([e.type for e in seen[:2]], ["attempt", "attempt"])
        if self.backend == "sqlite":  # one writer: the feed is simply id order
            self.assertEqual([e.id for e in seen], sorted(e.id for e in seen))

    async def test_consumers_keep_their_own_positions(self) -> None:
        storage = await self.open_storage()
        account = await storage.create_account("acme")
        await record_events(storage, account.id, 2)
        webhooks, stats = Feed(storage, "webhooks", reactor), Feed(storage, "stats", reactor)
        first = await read_to_the_end(webhooks)
        self.assertEqual(len(first), 8)
        self.assertEqual(await webhooks.read(), [])
        await record_events(storage, account.id, 1)
        self.assertEqual([e.position for e in await read_to_the_end(webhooks)],
                         (await every_position(storage))[8:])
        self.assertEqual([e.position for e in await read_to_the_end(stats)], await every_position(storage))
        self.assertEqual(await Feed(storage, "stats", reactor).read(), [])

    async def test_position_is_saved_with_the_consumers_writes(self) -> None:
        storage = await self.open_storage()
        account = await storage.create_account("acme")
        await record_events(storage, account.id, 1)
        await storage.db.transaction([SQL("CREATE TABLE tally (day INTEGER PRIMARY KEY, events INTEGER)")])
        feed = Feed(storage, "stats", reactor, batch_size=2)
        events = await feed.read()
        await feed.commit(events[-1].position, [SQL("INSERT INTO tally VALUES (1, ?)", (len(events),))])
        events = await feed.read()
        with self.assertRaises(Conflict):  # the write fails: the position stays where it was
            await feed.commit(events[-1].position, [SQL("INSERT INTO tally VALUES (1, ?)", (len(events),))])
        self.assertEqual(await Feed(storage, "stats", reactor).read(limit=2), events)
        self.assertEqual(await storage.db.query("SELECT day, events FROM tally"), [(1, 2)])

    async def test_a_position_never_moves_back(self) -> None:
        storage = await self.open_storage()
        account = await storage.create_account("acme")
        await record_events(storage, account.id, 1)
        feed = Feed(storage, "webhooks", reactor)
        events = await feed.read()
        await feed.commit(events[-1].position)
        await feed.commit(events[0].position)  # a late save of an older batch
        self.assertEqual(await Feed(storage, "webhooks", reactor).position(), events[-1].position)
        self.assertEqual(await feed.read(), [])

    async def test_consume_wakes_on_events_recorded_here_and_polls_for_others(self) -> None:
        url = self.storage_url()
        storage = await self.open_storage(url)
        account = await storage.create_account("acme")
        await record_events(storage, account.id, 1)
        clock = task.Clock()
        feed = Feed(storage, "dashboard", clock, batch_size=3, poll_interval=30)
        handled: list[Event] = []
        wanted: list[tuple[int, defer.Deferred]] = []

        async def handler(events: list[Event]) -> list[SQL]:
            handled.extend(events)
            for count, d in list(wanted):
                if len(handled) >= count:
                    wanted.remove((count, d))
                    d.callback(None)
            return []

        def handled_at_least(count: int) -> defer.Deferred:
            if len(handled) >= count:  # a reader thread's answer can come before the commit's
                return defer.succeed(None)
            d: defer.Deferred = defer.Deferred()
            wanted.append((count, d))
            return d.addTimeout(30, reactor)

        async def paused() -> None:
            while not clock.getDelayedCalls():
                await task.deferLater(reactor, 0.01)

        feed.start(handler)
        await handled_at_least(4)
        await storage.enqueue(new_message(account.id))  # this process: the feed is woken
        await handled_at_least(5)
        await paused()  # idle until its next poll
        other = await self.open_storage(url)  # another process: found by polling
        await other.enqueue(new_message(account.id))
        await task.deferLater(reactor, 0.2)
        self.assertEqual(len(handled), 5)  # nothing here woke it
        clock.advance(30)
        await handled_at_least(6)
        await feed.stop()
        self.assertEqual([e.position for e in handled], await every_position(storage))
        self.assertEqual(await Feed(storage, "dashboard", reactor).read(), [])

    async def test_a_paced_feed_gathers_the_events_of_its_pause_into_one_batch(self) -> None:
        storage = await self.open_storage()
        account = await storage.create_account("acme")
        await record_events(storage, account.id, 1)
        clock = task.Clock()
        feed = Feed(storage, "webhooks", clock, pace=5)
        batches: list[list[Event]] = []

        async def handler(events: list[Event]) -> list[SQL]:
            batches.append(events)
            return []

        feed.start(handler)
        await until(lambda: bool(batches and clock.getDelayedCalls()))  # caught up, pacing
        before = len(await every_position(storage))
        await storage.enqueue(new_message(account.id))  # wakes it: the pace is kept all the same
        await storage.enqueue(new_message(account.id))
        await task.deferLater(reactor, 0.2)
        self.assertEqual(len(batches), 1)
        clock.advance(5)
        await until(lambda: len(batches) == 2)
        await feed.stop()  # ends the next pace at once
        self.assertEqual([e.position for e in batches[1]], (await every_position(storage))[before:])
        self.assertEqual([e.position for e in batches[0] + batches[1]], await every_position(storage))

    async def test_a_failed_batch_comes_again_after_a_pause(self) -> None:
        storage = await self.open_storage()
        account = await storage.create_account("acme")
        await record_events(storage, account.id, 1)
        clock = task.Clock()
        feed = Feed(storage, "webhooks", clock, poll_interval=10)
        calls: list[list[Event]] = []
        done: defer.Deferred = defer.Deferred()

        async def handler(events: list[Event]) -> list[SQL]:
            calls.append(events)
            if len(calls) == 1:
                raise RuntimeError("receiver down")
            done.callback(None)
            return []

        feed.start(handler)
        while not clock.getDelayedCalls():
            await task.deferLater(reactor, 0.01)
        await storage.enqueue(new_message(account.id))  # new events do not cut the pause short
        await task.deferLater(reactor, 0.1)
        self.assertEqual(len(calls), 1)
        clock.advance(10)
        await done.addTimeout(30, reactor)
        await feed.stop()
        self.assertEqual(calls[1][:4], calls[0])
        self.flushLoggedErrors(RuntimeError)


    async def test_consumers_at_one_position_share_a_read(self) -> None:
        clock = ShiftedClock()  # the real reactor's time, moved on by hand (group commit uses it)
        storage = await self.open_storage(clock=clock)
        account = await storage.create_account("acme")
        await record_events(storage, account.id, 2)
        reads = feed_reads(storage)
        webhooks, statistics = Feed(storage, "webhooks", clock, 3), Feed(storage, "statistics", clock, 8)
        again = Feed(storage, "suppressions", clock, 3)
        first, second = await defer.gatherResults([defer.Deferred.fromCoroutine(webhooks.read()),
                                                   defer.Deferred.fromCoroutine(again.read())])
        self.assertEqual(len(reads), 1)  # the first asker's read, shared
        self.assertEqual(second, first)
        self.assertEqual([e.position for e in first], (await every_position(storage))[:3])
        # A full read of 3 is no answer for a reader of 8, who would take it for having caught up.
        self.assertEqual([e.position for e in await statistics.read()], (await every_position(storage))[:8])
        self.assertEqual(len(reads), 2)
        # Gone after a second: the next read at that position asks the database again.
        clock.advance(1)
        self.assertEqual(len(await webhooks.read()), 3)
        self.assertEqual(len(reads), 3)
        # An empty answer is never shared: an event recorded just after it is seen at once.
        await read_to_the_end(webhooks)
        await read_to_the_end(statistics)
        self.assertEqual(await webhooks.read(), [])
        await record_events(storage, account.id, 1)
        self.assertEqual(len(await statistics.read()), 4)


    async def test_a_read_serves_the_positions_inside_it(self) -> None:
        """Consumers a little behind one another take their batches from the leader's reads."""
        clock = ShiftedClock()
        storage = await self.open_storage(clock=clock)
        account = await storage.create_account("acme")
        await record_events(storage, account.id, 3)
        positions = await every_position(storage)
        self.assertEqual(len(positions), 12)
        reads = feed_reads(storage)
        leader, behind, further = (Feed(storage, name, clock, 4) for name in ("leader", "behind", "further"))
        self.assertEqual([e.position for e in await leader.read()], positions[:4])
        # Inside the leader's full read: its events after this position, then a read from its end.
        await behind.commit(positions[1])
        self.assertEqual([e.position for e in await behind.read()], positions[2:6])
        self.assertEqual(len(reads), 2)
        # Inside both: no read at all.
        await further.commit(positions[2])
        self.assertEqual([e.position for e in await further.read()], positions[3:7])
        self.assertEqual(len(reads), 2)
        # At the end of the feed: a read that was not full says nothing of events recorded since.
        wide = Feed(storage, "wide", clock, 8)
        await wide.commit(positions[7])
        self.assertEqual([e.position for e in await wide.read()], positions[8:12])
        await record_events(storage, account.id, 1)
        await behind.commit(positions[9])
        self.assertEqual([e.position for e in await behind.read()], positions[10:12])
        self.assertEqual(len(reads), 3)
        await behind.commit(positions[11])
        now = await every_position(storage)
        self.assertEqual([e.position for e in await behind.read()], now[12:16])  # read: the new events
        self.assertEqual(len(reads), 4)
        # A second later nothing is shared.
        clock.advance(1)
        await further.commit(positions[8])
        self.assertEqual([e.position for e in await further.read()], now[9:13])
        self.assertEqual(len(reads), 5)

    async def test_a_read_begun_before_a_commit_is_not_joined_after_it(self) -> None:
        storage = await self.open_storage()
        account = await storage.create_account("acme")
        await record_events(storage, account.id, 1)
        end = (await every_position(storage))[-1]
        query, answered, gate = storage.db.query, defer.Deferred(), defer.Deferred()

        async def answered_late(sql: str, params: tuple = ()) -> list:
            rows = await query(sql, params)  # the database's answer as of now...
            if FEED_READ in sql and not answered.called:
                answered.callback(None)
                await gate  # ...handed over later
            return rows
        storage.db.query = answered_late  # type: ignore[method-assign]
        early = defer.Deferred.fromCoroutine(storage.feed(end, 10))
        await answered  # the read has its answer: nothing yet
        await storage.enqueue(new_message(account.id))  # a commit: its consumers are woken
        late = defer.Deferred.fromCoroutine(storage.feed(end, 10))  # one of them reads
        gate.callback(None)
        self.assertEqual(await early, [])
        recorded = [p for p in await every_position(storage) if p > end]
        self.assertEqual([e.position for e in await late], recorded)


FeedSQLite, FeedPostgreSQL = both_backends(FeedSuite)


class FeedOnSQLite(BackendMixin, unittest.TestCase):
    async def test_a_read_starts_at_its_position_in_the_index(self) -> None:
        """Not at the feed's start: a read far into a big table costs what a read near its start does
        (SQLite plans a row-value comparison as a range on its first column, and xid is always 0)."""
        storage = await self.open_storage()
        account = await storage.create_account("acme")
        await record_events(storage, account.id, 2)
        asked = feed_reads(storage)
        await storage.feed((await every_position(storage))[2], 10)
        [(sql, params)] = asked
        plan = " / ".join(row[-1] for row in await storage.db.query("EXPLAIN QUERY PLAN " + sql, params))
        self.assertIn("events_feed (xid=? AND id>?)", plan)


class FeedOnPostgreSQL(BackendMixin, unittest.TestCase):
    """Ids are taken at insert, transactions commit in any order: the reader must not skip."""

    backend = "postgresql"

    def transaction(self, url: str) -> psycopg2.extensions.connection:
        connection = psycopg2.connect(url)  # not autocommit: a transaction stays open until commit
        self.addCleanup(connection.close)
        return connection

    def insert_event(self, connection: psycopg2.extensions.connection, account_id: str) -> int:
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO events (account_id, type, time, day, data) "
                           "VALUES (%s, 'attempt', 0, 0, '{}') RETURNING id", (account_id,))
            return cursor.fetchone()[0]

    async def test_a_transaction_with_a_lower_id_that_commits_last_is_not_skipped(self) -> None:
        url = self.storage_url()
        storage = await self.open_storage(url)
        account = await storage.create_account("acme")
        feed = Feed(storage, "webhooks", reactor)
        early, late = self.transaction(url), self.transaction(url)
        low = self.insert_event(early, account.id)
        high = self.insert_event(late, account.id)
        self.assertLess(low, high)
        late.commit()
        # A reader that followed ids would take ``high`` now and never see ``low``.
        self.assertEqual(await storage.db.query("SELECT id FROM events"), [(high,)])
        self.assertEqual(await feed.read(), [])
        early.commit()
        events = await feed.read()
        self.assertEqual([e.id for e in events], [low, high])
        await feed.commit(events[-1].position)
        self.assertEqual(await feed.read(), [])

    async def test_events_of_a_transaction_that_started_writing_first_come_first(self) -> None:
        url = self.storage_url()
        storage = await self.open_storage(url)
        account = await storage.create_account("acme")
        first, second = self.transaction(url), self.transaction(url)
        with first.cursor() as cursor:
            cursor.execute("SELECT pg_current_xact_id()")  # it has a transaction id from here on
        low = self.insert_event(second, account.id)
        high = self.insert_event(first, account.id)
        second.commit()
        feed = Feed(storage, "webhooks", reactor)
        self.assertEqual(await feed.read(), [])
        first.commit()
        self.assertEqual([e.id for e in await feed.read()], [high, low])
