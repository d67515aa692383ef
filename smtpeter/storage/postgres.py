"""PostgreSQL backend on txpostgres, with our own pool.

txpostgres is unmaintained and its ConnectionPool neither replaces dead
connections nor bounds waiting (shared/spec/libraries.md §2.1), so it stays
behind this module: we keep a bounded set of its ``Connection`` objects, drop
any that fails at the connection level, and open a fresh one on demand.

A transaction is sent as one multi-statement simple query: PostgreSQL runs
such a query as a single implicit transaction, so it costs one round trip and
one commit however many statements it holds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from twisted.internet import defer
from twisted.logger import Logger
from txpostgres import txpostgres

from smtpeter.storage.db import (
    Conflict,
    Database,
    Rows,
    Statement,
    StorageError,
    StorageUnavailable,
    render,
)

log = Logger()

# Errors after which a connection cannot be trusted any more.
_CONNECTION_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)


def _placeholders(sql: str) -> str:
    """Turn our ``?`` placeholders into psycopg2's ``%s``."""
    return sql.replace("%", "%%").replace("?", "%s")


class _Connection(txpostgres.Connection):
    """txpostgres' connection, minus an unhandled error when the server goes away.

    An idle connection stays registered with the reactor (for NOTIFY); if the
    server dies, its next read raises inside the reactor. We close it instead,
    and the pool discards closed connections when it hands them out.
    """

    def doRead(self) -> None:
        try:
            super().doRead()
        except _CONNECTION_ERRORS as exc:
            log.warn("PostgreSQL connection lost while idle: {exc}", exc=str(exc).strip())
            PostgresDatabase._discard(self)
        except ValueError:
            # libpq closed the socket under the read (fd -1): txpostgres cannot register it again.
            log.warn("PostgreSQL connection lost while idle: its socket is closed")
            PostgresDatabase._discard(self)


def _translate(exc: Exception) -> StorageError | Exception:
    if isinstance(exc, psycopg2.IntegrityError):
        return Conflict(str(exc).strip())
    if isinstance(exc, (*_CONNECTION_ERRORS, psycopg2.errors.QueryCanceled)):
        return StorageUnavailable(f"postgresql: {str(exc).strip()}")
    if isinstance(exc, psycopg2.DataError | ValueError):
        # Data PostgreSQL cannot hold (a NUL in text, say): refuse it, keep the connection.
        return StorageError(f"postgresql refused the data: {str(exc).strip()}")
    return exc


class PostgresDatabase(Database):
    dialect = "postgresql"

    def __init__(self, dsn: str, reactor: object, size: int = 4, connect_timeout: int = 5,
                 statement_timeout: int = 60) -> None:
        self._dsn = dsn
        self._reactor = reactor
        self._size = size
        self._connect_timeout = connect_timeout
        # libpq ignores connect_timeout on asynchronous connections, so we time
        # connecting ourselves; keepalives notice a server that vanished, and a
        # statement timeout bounds a query that hangs.
        self._connect_options = {
            "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3,
            "options": f"-c statement_timeout={statement_timeout * 1000}",
        }
        self._idle: deque[txpostgres.Connection] = deque()
        self._busy: set[txpostgres.Connection] = set()
        self._opening = 0
        self._waiters: deque[defer.Deferred] = deque()
        self._closed = False

    @property
    def max_concurrent_writes(self) -> int:
        return self._size

    skip_locked = " FOR UPDATE SKIP LOCKED"

    # An event's BIGSERIAL id is taken at insert, so a transaction holding a
    # lower id can commit after a reader has read past a higher one, which it
    # would then miss for good. Each event row carries its writer's transaction
    # id (xid, schema migration 2) and the feed is read in (xid, id) order, only
    # below the reading snapshot's xmin: every transaction older than that has
    # ended, so no event can appear there any more (the transactional-outbox
    # reader). A transaction still open holds the feed back; it never skips it.
    feed_horizon = " AND xid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint"

    def blob(self, data: bytes) -> object:
        return psycopg2.Binary(data)

    async def _open(self) -> txpostgres.Connection:
        connection = _Connection(reactor=self._reactor)
        try:
            await connection.connect(self._dsn, **self._connect_options).addTimeout(
                self._connect_timeout, self._reactor)
        except Exception as exc:
            if connection._connection is not None:
                self._discard(connection)
            reason = "timed out" if isinstance(exc, defer.TimeoutError) else str(exc).strip()
            raise StorageUnavailable(f"postgresql: cannot connect: {reason}") from exc
        return connection

    async def _acquire(self) -> txpostgres.Connection:
        if self._closed:
            raise StorageUnavailable("database is closed")
        while self._idle:
            connection = self._idle.popleft()
            if not connection._connection.closed:
                self._busy.add(connection)
                return connection
        if len(self._busy) + self._opening < self._size:
            self._opening += 1
            try:
                connection = await self._open()
            except StorageUnavailable:
                self._opening -= 1
                self._slot_freed()
                raise
            self._opening -= 1
            self._busy.add(connection)
            return connection
        waiter: defer.Deferred = defer.Deferred()
        self._waiters.append(waiter)
        return await waiter

    def _release(self, connection: txpostgres.Connection, broken: bool) -> None:
        self._busy.discard(connection)
        if broken or self._closed:
            self._discard(connection)
            connection = None
        if connection is None:
            self._slot_freed()
        elif self._waiters:
            self._busy.add(connection)
            self._waiters.popleft().callback(connection)
        else:
            self._idle.append(connection)

    def _slot_freed(self) -> None:
        """A connection slot became free: the next waiter opens its own connection.

        If that fails too, its own failure frees the slot for the next one, so
        during an outage every waiter hears StorageUnavailable instead of
        waiting for ever.
        """
        if self._waiters:
            waiter = self._waiters.popleft()
            defer.Deferred.fromCoroutine(self._acquire()).chainDeferred(waiter)

    @staticmethod
    def _discard(connection: txpostgres.Connection) -> None:
        try:
            connection.close()
        except Exception:  # noqa: S110 - it is already broken; closing is best effort
            pass

    async def _with_connection(self, sql: str, params: Sequence[object], fetch: bool) -> Rows:
        connection = await self._acquire()
        broken = False
        try:
            cursor = connection.cursor()
            try:
                await cursor.execute(sql, params)
                if fetch and cursor.description is not None:
                    return [tuple(row) for row in cursor.fetchall()]
                return []
            finally:
                cursor.close()
        except Exception as exc:
            broken = isinstance(exc, _CONNECTION_ERRORS) or connection._connection.closed
            translated = _translate(exc)
            if translated is exc:
                raise
            raise translated from exc
        finally:
            self._release(connection, broken)

    async def transaction(self, statements: Sequence[Statement], durable: bool = True) -> Rows:
        texts: list[str] = [] if durable else ["SET LOCAL synchronous_commit TO off"]
        params: list[object] = []
        for statement in statements:
            for sql in render(statement):
                texts.append(_placeholders(sql.text))
                params.extend(sql.params)
        if len(texts) == (0 if durable else 1):
            return []
        return await self._with_connection(";\n".join(texts), params, fetch=True)

    async def query(self, sql: str, params: Sequence[object] = ()) -> Rows:
        return await self._with_connection(_placeholders(sql), list(params), fetch=True)

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            self._discard(self._idle.popleft())
        for connection in list(self._busy):
            self._discard(connection)
        self._busy.clear()
        while self._waiters:
            self._waiters.popleft().errback(StorageUnavailable("database is closed"))
