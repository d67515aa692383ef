"""The storage interface every stage uses, written once over both backends.

``Storage`` is composed of its parts, one job each: ``accounts`` (accounts,
tokens, logins), ``domains`` (sender domains, their settings, DNS status and
DKIM keys), ``queue`` (messages, leases, outcomes; built
on ``events``: event rows and the feed's positions), ``hosted`` (hosted images),
``webhooks`` (hooks, their calls and attempts), ``inbound`` (what mx.listen receives), ``dmarc``
(DMARC aggregate reports), ``suppressions`` (each account's suppression list), ``operator``
(admin logins, every account's figures, the queue by domain) and ``batching`` (group commit).
Storage persists what it is given; it imports no stage.
"""

from __future__ import annotations

import sqlite3

from twisted.internet.interfaces import IReactorTime

from smtpeter.storage.accounts import Accounts
from smtpeter.storage.dashboard import Dashboard
from smtpeter.storage.db import Database, StorageError
from smtpeter.storage.dmarc import DmarcReports
from smtpeter.storage.domains import Domains
from smtpeter.storage.hosted import HostedImages
from smtpeter.storage.inbound import Inbound
from smtpeter.storage.operator import Operator
from smtpeter.storage.queue import DEFAULT_MAX_DELIVER_TIME, Queue
from smtpeter.storage.schema import migrate
from smtpeter.storage.suppressions import Suppressions
from smtpeter.storage.webhooks import Webhooks


class Storage(Queue, Accounts, Domains, HostedImages, Webhooks, Inbound, DmarcReports, Suppressions,
              Dashboard, Operator):
    """Accounts, secrets, sender domains and their keys, the queue, events, hosted images, webhooks
    and what comes back."""

    async def migrate(self) -> int:
        return await migrate(self.db)

    async def close(self) -> None:
        await self.settle()
        await self.db.close()


async def open_storage(url: str, reactor: IReactorTime, pool_size: int = 4,
                       max_deliver_time: float = DEFAULT_MAX_DELIVER_TIME) -> Storage:
    """Open (and migrate) the database that ``url`` names; StorageError when that cannot be done."""
    try:
        return await _open_storage(url, reactor, pool_size, max_deliver_time)
    except (OSError, sqlite3.Error) as exc:  # SQLite's own errors when the file cannot be opened at all
        raise StorageError(str(exc)) from exc


async def _open_storage(url: str, reactor: IReactorTime, pool_size: int,
                        max_deliver_time: float) -> Storage:
    if url.startswith("sqlite:///"):
        from smtpeter.storage.sqlite import SQLiteDatabase

        db: Database = SQLiteDatabase(url[len("sqlite:///"):] or ":memory:", reactor)
    elif url.startswith(("postgresql://", "postgres://")):
        from smtpeter.storage.postgres import PostgresDatabase

        db = PostgresDatabase(url, reactor, size=pool_size)
    else:
        raise StorageError(f"unsupported storage url {url!r}")
    storage = Storage(db, reactor, max_deliver_time)
    try:
        await storage.migrate()
    except Exception:
        await db.close()
        raise
    return storage
