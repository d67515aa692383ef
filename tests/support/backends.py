"""Storage on each backend, for suites that must pass on both."""

from __future__ import annotations

import tempfile
from pathlib import Path

from twisted.internet import defer, reactor
from twisted.trial import unittest

from smtpeter.storage import Storage, open_storage
from tests.support import postgres


def sqlite_url(test: unittest.TestCase) -> str:
    directory = Path(tempfile.mkdtemp(prefix="smtpeter-test-"))
    return f"sqlite:///{directory / 'smtpeter.sqlite3'}"


def postgres_url(test: unittest.TestCase) -> str:
    return postgres.cluster().create_database()


class BackendMixin:
    """Mix into a TestCase and set ``backend`` to "sqlite" or "postgresql"."""

    backend = "sqlite"

    def storage_url(self) -> str:
        return sqlite_url(self) if self.backend == "sqlite" else postgres_url(self)

    async def open_storage(self, url: str | None = None, clock: object = reactor) -> Storage:
        storage = await open_storage(url or self.storage_url(), reactor)
        storage.clock = clock
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(storage.close()))
        return storage


def both_backends(cls: type) -> tuple[type, type]:
    """Make a SQLite and a PostgreSQL variant of a test class body."""
    sqlite = type(f"{cls.__name__}SQLite", (cls, BackendMixin, unittest.TestCase), {"backend": "sqlite"})
    pg = type(f"{cls.__name__}PostgreSQL", (cls, BackendMixin, unittest.TestCase),
              {"backend": "postgresql"})
    return sqlite, pg
