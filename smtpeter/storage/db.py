"""The database seam: one small asynchronous interface, two backends.

Everything above this module writes dialect-neutral SQL with ``?``
placeholders and hands whole transactions over as lists of statements, so
that a transaction is one thread hop on SQLite and a pipelined series of
round trips on PostgreSQL, and neither blocks the reactor.
"""

from __future__ import annotations

import abc
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime


class StorageError(Exception):
    """Base class for storage failures."""


class StorageUnavailable(StorageError):
    """The database cannot be reached or cannot write right now (try again later)."""


class Conflict(StorageError):
    """A uniqueness or integrity rule refused the write."""


class NotFound(StorageError):
    """No such object (or it belongs to another account)."""


@dataclass(frozen=True)
class SQL:
    """One statement; ``?`` marks each parameter."""

    text: str
    params: Sequence[object] = ()


@dataclass(frozen=True)
class Insert:
    """A multi-row INSERT, rendered by each backend in its fastest form."""

    table: str
    columns: Sequence[str]
    rows: Sequence[Sequence[object]]
    # Appended verbatim, e.g. "ON CONFLICT DO NOTHING".
    suffix: str = ""
    # Insert only the rows for which this holds (v.column1, v.column2... name a
    # row's values); then ``types`` gives each column's SQL type for the casts.
    where: str = ""
    where_params: Sequence[object] = ()
    types: Sequence[str] = ()


@dataclass(frozen=True)
class BulkUpdate:
    """Update many rows by key in one statement (``UPDATE ... FROM (VALUES ...)``).

    ``columns`` pairs each column with its SQL type (values are CAST to it, so
    an all-NULL column still has a type on PostgreSQL); each row holds the key
    first, then one value per column. ``where`` adds a condition on the table.
    """

    table: str
    key: str
    columns: Sequence[tuple[str, str]]
    rows: Sequence[Sequence[object]]
    where: str = ""
    where_params: Sequence[object] = ()


Statement = SQL | Insert | BulkUpdate
Rows = list[tuple]

# SQLite's default limit on bound parameters per statement: 32766 since 3.32, 999 before.
MAX_PARAMETERS = 32766 if sqlite3.sqlite_version_info >= (3, 32) else 999


def render(statement: Statement) -> list[SQL]:
    """Turn a statement into plain SQL; an Insert becomes multi-row INSERTs.

    One statement for many rows costs one round trip on PostgreSQL, and on
    SQLite one step (one GIL hand-over) instead of one per row.
    """
    if isinstance(statement, SQL):
        return [statement]
    if not statement.rows:
        return []
    width = len(statement.rows[0])
    row = "(" + ", ".join(["?"] * width) + ")"
    per_statement = max(1, (MAX_PARAMETERS - 10) // width)
    rendered = []
    for start in range(0, len(statement.rows), per_statement):
        rows = statement.rows[start:start + per_statement]
        values = ", ".join([row] * len(rows))
        params = [value for r in rows for value in r]
        # Table and column names are constants of our code, never user input.
        if isinstance(statement, Insert) and statement.where:
            casts = ", ".join(f"CAST(v.column{i} AS {t})" for i, t in enumerate(statement.types, start=1))
            text = (
                f"INSERT INTO {statement.table} ({', '.join(statement.columns)}) "  # noqa: S608
                f"SELECT {casts} FROM (VALUES {values}) AS v WHERE {statement.where}"
            )
            params.extend(statement.where_params)
        elif isinstance(statement, Insert):
            text = (
                f"INSERT INTO {statement.table} ({', '.join(statement.columns)}) "  # noqa: S608
                f"VALUES {values}" + (" " + statement.suffix if statement.suffix else "")
            )
        else:
            table = statement.table
            assignments = ", ".join(
                f"{name} = CAST(v.column{index} AS {sql_type})"
                for index, (name, sql_type) in enumerate(statement.columns, start=2)
            )
            text = (
                f"UPDATE {table} SET {assignments} FROM (VALUES {values}) AS v "  # noqa: S608
                f"WHERE {table}.{statement.key} = v.column1"
                + (f" AND {statement.where}" if statement.where else "")
            )
            params.extend(statement.where_params)
        rendered.append(SQL(text, params))
    return rendered


class Database(abc.ABC):
    """A connection (pool) to one database."""

    dialect: str

    @abc.abstractmethod
    async def transaction(self, statements: Sequence[Statement], durable: bool = True) -> Rows:
        """Run ``statements`` atomically; return the rows the last one produced.

        ``durable=False`` skips the flush to disk at commit, for writes whose
        loss on a power failure costs nothing but a repeat (leases, delivery
        outcomes) or costs little (click and open events: hits wait in memory
        anyway). The next durable commit flushes them too (WAL order).
        """

    @abc.abstractmethod
    async def query(self, sql: str, params: Sequence[object] = ()) -> Rows:
        """Run one read-only statement and return its rows."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release every connection."""

    @property
    def max_concurrent_writes(self) -> int:
        """How many write transactions it makes sense to have in flight at once."""
        return 1

    def blob(self, data: bytes) -> object:
        """Wrap bytes for a binary column."""
        return data

    # Appended to a queue-claim subquery so that concurrent claimers skip each
    # other's rows instead of waiting (PostgreSQL); SQLite has one writer anyway.
    skip_locked = ""

    # Appended to a read of the event feed: only events before which no other
    # event can still be committed. SQLite's one writer commits events in id
    # order, so every event it shows qualifies (PostgreSQL: see its backend).
    feed_horizon = ""


class Tables:
    """One part of the storage interface: the database it uses and the clock that stamps rows."""

    def __init__(self, db: Database, clock: IReactorTime) -> None:
        self.db = db
        self.clock = clock

    def now(self) -> float:
        return self.clock.seconds()
