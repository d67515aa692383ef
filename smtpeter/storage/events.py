"""Event persistence: the events table, the queries the API, the CLI and the log
files make of it, and the feed (every event in order, and each consumer's
saved position).

What an event is and how it is built belongs to ``smtpeter.events``; here it
is a row, written in the transaction of the message or the outcome it records.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from smtpeter.storage import event_json
from smtpeter.storage.db import SQL, Database, Insert, Statement, Tables
from smtpeter.storage.keys import address_key, check_id
from smtpeter.storage.models import FEED_START, Event, NewEvent, Position

EVENTS_LIMIT = 10000  # events one query answers at most
# The feed's consumers (webhooks, suppressions, statistics) read the same events: one read, and
# one decoding of its rows, serves every consumer that asks, within this many seconds, for a
# position at its start or inside it (the events after that position). A batch is any non-empty
# run of events from a position, so a shared one, shorter or a moment old, is still a right answer.
SHARED_FEED_READ_SECONDS = 1.0
DAY = 86400

_COLUMNS = ("account_id", "message_id", "recipient", "type", "time", "day", "data")
# The columns' SQL types, for an insert that selects its rows (Insert.where).
_TYPES = ("TEXT", "TEXT", "TEXT", "TEXT", "DOUBLE PRECISION", "INTEGER", "TEXT")
_SELECT = "id, account_id, message_id, recipient, type, time, data, xid"


def event_row(account_id: str, message_id: str, address: str, event_type: str, time: float,
              data: dict[str, Any]) -> tuple:
    """One row of ``insert_events``."""
    return (account_id, message_id, address_key(address), event_type, time, int(time // DAY),
            event_json.encode(data))


def insert_events(rows: Sequence[tuple], where: str = "", where_params: Sequence[object] = ()) -> Insert:
    """Insert ``event_row`` rows (only those for which ``where`` holds, if given)."""
    return Insert("events", _COLUMNS, rows, where=where, where_params=where_params, types=_TYPES)


class _SharedRead:
    """One read of the feed and everyone waiting for it; its outcome goes to each waiter and is
    handled there (a failure never stays unhandled on the read itself)."""

    def __init__(self, at: float, after: Position, limit: int, read: defer.Deferred) -> None:
        self.at = at
        self.after = after
        self.limit = limit
        self._waiters: list[defer.Deferred] = []
        self._outcome: list[Event] | Failure | None = None
        read.addBoth(self._done)

    @property
    def answered(self) -> bool:
        return self._outcome is not None

    def events_after(self, position: Position) -> tuple[list[Event], bool] | None:
        """If ``position`` lies inside this answered read, the events after it (those the database
        would give, as the read is every event between its start and its last one), and whether
        the read was full (more may follow its last)."""
        events = self._outcome
        if not isinstance(events, list) or not events or not self.after < position < events[-1].position:
            return None
        return events[bisect.bisect_right(events, position, key=_position):], len(events) >= self.limit

    def wait(self) -> defer.Deferred:
        if isinstance(self._outcome, Failure):
            return defer.fail(self._outcome)
        if self._outcome is not None:
            return defer.succeed(self._outcome)
        waiter: defer.Deferred = defer.Deferred()
        self._waiters.append(waiter)
        return waiter

    def _done(self, outcome: list[Event] | Failure) -> None:
        self._outcome = outcome
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(outcome, Failure):
                waiter.errback(outcome)
            else:
                waiter.callback(outcome)


def _position(event: Event) -> Position:
    return event.position


def _event(row: Sequence[Any]) -> Event:
    return Event(row[0], row[1], row[2], row[3], row[4], row[5], row[6], Position(row[7], row[0]))


class Events(Tables):
    """Reading events back, and the feed's positions."""

    def __init__(self, db: Database, clock: IReactorTime) -> None:
        super().__init__(db, clock)
        self._event_watchers: list[Callable[[], None]] = []
        self._feed_reads: dict[Position, _SharedRead] = {}

    async def record_events(self, events: Sequence[NewEvent]) -> None:
        """Store events that belong to no message or outcome transaction (a step's warning,
        clicks and opens), stamped now, in one transaction."""
        now = self.now()
        await self.record_event_rows([event_row(e.account_id, e.message_id, e.address, e.type,
                                                now if e.time is None else e.time, e.data) for e in events])

    async def record_event_rows(self, rows: Sequence[tuple], durable: bool = True) -> None:
        """``record_events`` for ``event_row`` rows made already (the hit log makes its clicks' and
        opens' a few at a time, between requests: their JSON is most of the work); ``durable``: as
        ``Database.transaction``."""
        if not rows:
            return
        await self.db.transaction([insert_events(rows)], durable=durable)
        self._events_recorded()

    async def events(self, message_id: str, account_id: str | None = None,
                     types: Sequence[str] = ()) -> list[Event]:
        """Every event of one message (one recipient), oldest first; only those of ``account_id``,
        and of ``types``, if given."""
        check_id(message_id)
        clause = f" AND type IN ({', '.join('?' * len(types))})" if types else ""
        # The account is checked here, not in SQL: with both in the WHERE clause SQLite reads the
        # account's every event in time order (events_account_time spares it a sort) rather than
        # the message's few (events_message), milliseconds instead of microseconds.
        rows = await self.db.query(
            f"SELECT {_SELECT} FROM events "  # noqa: S608 - clause holds placeholders only
            f"WHERE message_id = ?{clause} ORDER BY time, id",
            (message_id, *types),
        )
        return [_event(r) for r in rows if account_id is None or r[1] == account_id]

    async def account_events(self, account_id: str, since: float, until: float,
                             types: Sequence[str] = (), recipient: str | None = None,
                             tags: Sequence[str] = (), limit: int = EVENTS_LIMIT) -> list[Event]:
        """An account's events in [since, until), oldest first; optionally only some types,
        one address, or events that carry all of ``tags`` (a superset: check them again)."""
        clause = f" AND type IN ({', '.join('?' * len(types))})" if types else ""
        params: list[object] = [account_id, since, until, *types]
        if recipient is not None:
            clause += " AND recipient = ?"
            params.append(address_key(recipient))
        # Tags sit in the JSON data as strings: an exact, case-sensitive substring
        # search narrows the rows in the database. Rows written before event_json
        # have a non-ASCII tag \u-escaped.
        find = "instr(data, ?) > 0" if self.db.dialect == "sqlite" else "strpos(data, ?) > 0"
        for tag in tags:
            forms = list(dict.fromkeys((event_json.encode(tag), json.dumps(tag))))
            clause += " AND (" + " OR ".join([find] * len(forms)) + ")"
            params += forms
        rows = await self.db.query(
            f"SELECT {_SELECT} FROM events "  # noqa: S608 - clause holds placeholders only
            f"WHERE account_id = ? AND time >= ? AND time < ?{clause} ORDER BY time, id LIMIT ?",
            (*params, limit),
        )
        return [_event(r) for r in rows]

    async def event_days(self, account_id: str) -> list[int]:
        """UTC days (time // 86400) on which the account has events."""
        rows = await self.db.query(
            "SELECT DISTINCT day FROM events WHERE account_id = ? ORDER BY day", (account_id,))
        return [row[0] for row in rows]

    async def event_types_on(self, account_id: str, day: int) -> list[str]:
        rows = await self.db.query(
            "SELECT DISTINCT type FROM events WHERE account_id = ? AND day = ?", (account_id, day))
        return sorted(row[0] for row in rows)

    async def events_on(self, account_id: str, day: int, types: Sequence[str],
                        limit: int = 1_000_000) -> list[Event]:
        rows = await self.db.query(
            f"SELECT {_SELECT} FROM events WHERE account_id = ? AND day = ? "  # noqa: S608
            f"AND type IN ({', '.join('?' * len(types))}) ORDER BY time, id LIMIT ?",
            (account_id, day, *types, limit),
        )
        return [_event(r) for r in rows]

    # -- the feed ---------------------------------------------------------------

    async def feed(self, after: Position, limit: int) -> list[Event]:
        """Up to ``limit`` events after ``after``, in feed order (by position).

        Only events before which no other can still be committed are returned
        (``Database.feed_horizon``), so a reader that goes on from the last one
        it was given never misses one. Readers share a read
        (``SHARED_FEED_READ_SECONDS``): at its position, or inside it (the
        events after theirs, and if it was full, those after its end); an empty
        answer is never shared, and a shared read that stopped at a smaller
        limit than this reader's is read again whole (a consumer takes a short
        batch for having caught up).
        """
        now = self.now()
        self._feed_reads = {p: r for p, r in self._feed_reads.items()
                            if now - r.at < SHARED_FEED_READ_SECONDS}
        shared = self._feed_reads.get(after)
        if shared is None:
            for earlier in self._feed_reads.values():
                inside = earlier.events_after(after)
                if inside is not None:
                    events, full = inside
                    if full and len(events) < limit:  # and the rest from where that read ended
                        events += (await self.feed(events[-1].position, limit))[:limit - len(events)]
                    return events[:limit]
            read = defer.Deferred.fromCoroutine(self._read_feed(after, limit))
            shared = _SharedRead(now, after, limit, read)
            self._feed_reads[after] = shared
        try:
            events = await shared.wait()
        except Exception:
            self._feed_reads.pop(after, None)
            raise
        if not events:
            self._feed_reads.pop(after, None)
        elif len(events) >= shared.limit and shared.limit < limit:
            return await self._read_feed(after, limit)
        return events[:limit]

    async def _read_feed(self, after: Position, limit: int) -> list[Event]:
        # The rest of ``after``'s transaction, then the later ones: each an index range. (SQLite
        # plans "(xid, id) > (?, ?)" as xid >= ? and reads past every event of the transaction
        # before the position: the whole table on SQLite, where xid is always 0; 61 ms a read at
        # 500,000 events against 0.9 ms.)
        horizon = self.db.feed_horizon
        rows = await self.db.query(
            f"SELECT * FROM (SELECT {_SELECT} FROM events WHERE xid = ? AND id > ?{horizon} "  # noqa: S608
            "ORDER BY id LIMIT ?) AS this_transaction UNION ALL "
            f"SELECT * FROM (SELECT {_SELECT} FROM events WHERE xid > ?{horizon} "
            "ORDER BY xid, id LIMIT ?) AS later ORDER BY xid, id LIMIT ?",
            (after.xid, after.id, limit, after.xid, limit, limit),
        )
        return [_event(r) for r in rows]

    async def feed_position(self, consumer: str) -> Position:
        """The position ``consumer`` last saved (the feed's start if none)."""
        rows = await self.db.query(
            "SELECT xid, event_id FROM feed_positions WHERE consumer = ?", (consumer,))
        return Position(*rows[0]) if rows else FEED_START

    async def save_feed_position(self, consumer: str, position: Position,
                                 effects: Sequence[Statement] = ()) -> None:
        """Save that ``consumer`` is done up to ``position``, in one transaction with its own
        writes (``effects``): both or neither. A position behind the saved one is ignored."""
        await self.db.transaction([*effects, SQL(
            "INSERT INTO feed_positions (consumer, xid, event_id, updated) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (consumer) DO UPDATE SET xid = excluded.xid, event_id = excluded.event_id, "
            "updated = excluded.updated "
            "WHERE (feed_positions.xid, feed_positions.event_id) < (excluded.xid, excluded.event_id)",
            (consumer, *position, self.now()))])

    def watch_events(self, watcher: Callable[[], None]) -> Callable[[], None]:
        """Call ``watcher`` after every commit of this process that may have recorded events
        (other processes' events are found by polling); returns what stops it."""
        self._event_watchers.append(watcher)
        return lambda: self._event_watchers.remove(watcher)

    def _events_recorded(self) -> None:
        # A read still under way may have missed this commit's events: none is joined from now on
        # (a reader woken by the commit would find nothing and sleep until its next poll). One
        # done is a non-empty batch: still a right answer, still shared.
        self._feed_reads = {p: r for p, r in self._feed_reads.items() if r.answered}
        for watcher in list(self._event_watchers):
            watcher()
