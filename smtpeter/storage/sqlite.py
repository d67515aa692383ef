"""SQLite backend: one writer thread, a few reader threads, WAL, fsync on commit.

Measured (shared/spec/libraries.md §3): a single writer connection with
``BEGIN IMMEDIATE`` beats several writers fighting over the lock, and
batching many rows into one transaction is what makes it fast. The writer
runs with ``synchronous=FULL`` so a committed transaction survives power loss.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from smtpeter.storage.db import (
    Conflict,
    Database,
    Rows,
    Statement,
    StorageError,
    StorageUnavailable,
    render,
)

T = TypeVar("T")


def _connect(path: str) -> sqlite3.Connection:
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("PRAGMA foreign_keys=ON")
    con.execute("PRAGMA busy_timeout=30000")
    return con


def _translate(exc: sqlite3.Error) -> StorageError:
    if isinstance(exc, sqlite3.IntegrityError):
        return Conflict(str(exc))
    return StorageUnavailable(f"sqlite: {exc}")


class SQLiteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, path: str, reactor: object, readers: int = 2) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._reactor = reactor
        self._writer_pool = ThreadPool(1, 1, name="sqlite-writer")
        self._reader_pool = ThreadPool(1, readers, name="sqlite-reader")
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        # Open the writer now so a bad path fails at start-up, not at the first message.
        self._writer = _connect(path)
        self._durable = True
        self._connections.append(self._writer)
        if path != ":memory:":
            os.chmod(path, 0o600)
        self._writer_pool.start()
        self._reader_pool.start()

    async def _in(self, pool: ThreadPool, fn: Callable[[], T]) -> T:
        if self._closed:
            raise StorageUnavailable("database is closed")
        return await deferToThreadPool(self._reactor, pool, fn)

    def _reader(self) -> sqlite3.Connection:
        if self.path == ":memory:":
            return self._writer
        con = getattr(self._local, "con", None)
        if con is None:
            con = _connect(self.path)
            self._local.con = con
            with self._lock:
                self._connections.append(con)
        return con

    async def transaction(self, statements: Sequence[Statement], durable: bool = True) -> Rows:
        return await self._in(self._writer_pool, lambda: self._run(statements, durable))

    def _run(self, statements: Sequence[Statement], durable: bool) -> Rows:
        con = self._writer
        rows: Rows = []
        try:
            if durable != self._durable:
                # In WAL mode NORMAL commits without fsync; a later FULL commit
                # fsyncs the log, theirs included.
                con.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                self._durable = durable
            con.execute("BEGIN IMMEDIATE")
            try:
                for statement in statements:
                    for sql in render(statement):
                        rows = con.execute(sql.text, tuple(sql.params)).fetchall()
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise _translate(exc) from exc
        return rows

    async def query(self, sql: str, params: Sequence[object] = ()) -> Rows:
        def run() -> Rows:
            try:
                return self._reader().execute(sql, tuple(params)).fetchall()
            except sqlite3.Error as exc:
                raise _translate(exc) from exc

        # An in-memory database exists only on the writer's connection.
        pool = self._writer_pool if self.path == ":memory:" else self._reader_pool
        return await self._in(pool, run)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._writer_pool.stop()
        self._reader_pool.stop()
        with self._lock:
            for con in self._connections:
                con.close()
            self._connections.clear()
