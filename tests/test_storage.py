"""The storage suite: every test runs on SQLite and on a real PostgreSQL cluster."""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial import unittest

from smtpeter import credentials
from smtpeter.storage import Conflict, NotFound, StorageError, StorageUnavailable
from smtpeter.storage.db import SQL
from smtpeter.storage.models import NewMessage, NewRecipient
from smtpeter.storage.schema import LATEST, current_version, migrate
from tests.support import postgres
from tests.support.backends import BackendMixin, both_backends


def new_message(account_id: str, recipients: int = 1, body: bytes = b"hello\r\n") -> NewMessage:
    return NewMessage(
        account_id=account_id,
        source="smtp",
        envelope="sender@example.com",
        mime=b"From: a@example.com\r\nSubject: t\r\n\r\n" + body,
        recipients=[NewRecipient(f"r{i}@example.net", notify="FAILURE", orcpt=f"rfc822;r{i}@example.net")
                    for i in range(recipients)],
        options={"trackclicks": True, "inlinecss": False},
        tags=["news", "nov"],
        body="8BITMIME",
        dsn_ret="HDRS",
        dsn_envid="env-1",
    )


class StorageSuite:
    async def test_migrate_is_idempotent_and_versioned(self) -> None:
        storage = await self.open_storage()
        self.assertEqual(await current_version(storage.db), LATEST)
        self.assertEqual(await migrate(storage.db), LATEST)
        rows = await storage.db.query("SELECT COUNT(*) FROM schema_version")
        self.assertEqual(rows[0][0], LATEST)

    async def test_newer_schema_is_refused(self) -> None:
        storage = await self.open_storage()
        await storage.db.transaction([SQL("INSERT INTO schema_version (version) VALUES (?)", (LATEST + 1,))])
        with self.assertRaises(StorageError):
            await migrate(storage.db)

    async def test_accounts_unique_by_name(self) -> None:
        storage = await self.open_storage()
        account = await storage.create_account("acme")
        self.assertEqual((await storage.account("acme")).id, account.id)
        self.assertEqual((await storage.account(account.id)).name, "acme")
        with self.assertRaises(Conflict):
            await storage.create_account("acme")
        with self.assertRaises(NotFound):
            await storage.account("nobody")

    async def test_api_tokens_are_stored_hashed(self) -> None:
        storage = await self.open_storage()
        account = await storage.create_account("acme")
        _, token = await storage.create_api_token(account.id)
        self.assertEqual(await storage.account_for_token(token), account.id)
        self.assertIsNone(await storage.account_for_token(token + "x"))
        rows = await storage.db.query("SELECT token_hash FROM api_tokens")
        self.assertEqual(rows, [(credentials.hash_token(token),)])
        self.assertNotIn(token, repr(rows))

    async def test_smtp_passwords_are_stored_hashed(self) -> None:
        storage = await self.open_storage()
        account = await storage.create_account("acme")
        password = await storage.create_smtp_login(account.id, "acme", {"trackclicks": True})
        login = await storage.smtp_login("acme")
        self.assertEqual(login.account_id, account.id)
        self.assertEqual(login.options, {"trackclicks": True})
        self.assertNotIn(password, login.password_hash)
        self.assertTrue(login.password_hash.startswith("scrypt$"))
        self.assertTrue(credentials.verify_password(password, login.password_hash))
        self.assertFalse(credentials.verify_password(password + "x", login.password_hash))
        with self.assertRaises(Conflict):
            await storage.create_smtp_login(account.id, "acme")

    async def test_sender_domains(self) -> None:
        storage = await self.open_storage()
        acme = await storage.create_account("acme")
        other = await storage.create_account("other")
        await storage.add_domain(acme.id, "Example.COM")
        self.assertEqual(await storage.approved_domains(acme.id), set())
        await storage.approve_domain(acme.id, "example.com")
        self.assertEqual(await storage.approved_domains(acme.id), {"example.com"})
        with self.assertRaises(Conflict):
            await storage.add_domain(other.id, "example.com")
        with self.assertRaises(NotFound):
            await storage.approve_domain(other.id, "example.com")
        self.assertEqual(await storage.approved_domains(other.id), set())

    async def test_enqueue_stores_everything_per_recipient(self) -> None:
        storage = await self.open_storage()
        account = await storage.create_account("acme")
        ids = await storage.enqueue(new_message(account.id, recipients=3))
        self.assertEqual(len(set(ids)), 3)
        queued = await storage.queue()
        self.assertEqual(sorted(q.id for q in queued), sorted(ids))
        first = await storage.recipient(ids[0])
        self.assertEqual((first.address, first.state, first.attempts), ("r0@example.net", "queued", 0))
        content = await storage.message_content(ids[2])
        self.assertEqual(content["mime"], b"From: a@example.com\r\nSubject: t\r\n\r\nhello\r\n")
        self.assertEqual(content["options"], {"trackclicks": True, "inlinecss": False})
        self.assertEqual(content["tags"], ["news", "nov"])
        self.assertEqual((content["body"], content["dsn_ret"], content["dsn_envid"]),
                         ("8BITMIME", "HDRS", "env-1"))
        rows = await storage.db.query("SELECT notify, orcpt FROM recipients WHERE id = ?", (ids[1],))
        self.assertEqual(rows, [("FAILURE", "rfc822;r1@example.net")])
        events = await storage.events(ids[0])
        self.assertEqual([e.type for e in events], ["attempt"])
        self.assertEqual(events[0].data["properties"], "trackclicks")

    async def test_binary_content_round_trips(self) -> None:
        storage = await self.open_storage()
        account = await storage.create_account("acme")
        body = bytes(range(1, 256)) * 64 + b"\r\n"
        ids = await storage.enqueue(new_message(account.id, body=body))
        content = await storage.message_content(ids[0])
        self.assertTrue(content["mime"].endswith(body))

    async def test_concurrent_enqueues_share_commits(self) -> None:
        storage = await self.open_storage()
        account = await storage.create_account("acme")
        commits = []
        original = storage.db.transaction

        async def counting(statements):  # type: ignore[no-untyped-def]
            commits.append(len(statements))
            return await original(statements)

        storage.db.transaction = counting
        results = await defer.gatherResults(
            [storage.enqueue(new_message(account.id)) for _ in range(200)], consumeErrors=True
        )
        self.assertEqual(len({ids[0] for ids in results}), 200)
        self.assertLess(len(commits), 20, "200 concurrent enqueues should need only a few commits")
        self.assertEqual(len(await storage.queue(limit=1000)), 200)

    async def test_queue_scoping_and_delete(self) -> None:
        storage = await self.open_storage()
        acme = await storage.create_account("acme")
        other = await storage.create_account("other")
        ids = await storage.enqueue(new_message(acme.id, recipients=2))
        (other_id,) = await storage.enqueue(new_message(other.id))
        self.assertEqual(len(await storage.queue(account_id=acme.id)), 2)
        with self.assertRaises(NotFound):
            await storage.recipient(other_id, account_id=acme.id)
        await storage.delete_recipient(ids[0])
        with self.assertRaises(NotFound):
            await storage.recipient(ids[0])
        # The message stays while another recipient needs it, and goes with the last one.
        self.assertEqual((await storage.message_content(ids[1]))["envelope"], "sender@example.com")
        await storage.delete_recipient(ids[1])
        rows = await storage.db.query("SELECT COUNT(*) FROM messages WHERE account_id = ?", (acme.id,))
        self.assertEqual(rows[0][0], 0)
        with self.assertRaises(NotFound):
            await storage.delete_recipient(ids[1])

    async def test_closed_storage_is_unavailable_not_silent(self) -> None:
        storage = await self.open_storage()
        account = await storage.create_account("acme")
        await storage.close()
        with self.assertRaises(StorageUnavailable):
            await storage.enqueue(new_message(account.id))


StorageSQLite, StoragePostgreSQL = both_backends(StorageSuite)


class PostgresOutage(BackendMixin, unittest.TestCase):
    """A dead PostgreSQL gives StorageUnavailable, and the pool recovers with it."""

    backend = "postgresql"

    async def test_dead_database_then_recovery(self) -> None:
        cluster = postgres.cluster()
        storage = await self.open_storage()
        account = await storage.create_account("acme")
        await storage.enqueue(new_message(account.id))
        cluster.stop("immediate")
        try:
            with self.assertRaises(StorageUnavailable):
                await storage.enqueue(new_message(account.id))
            with self.assertRaises(StorageUnavailable):
                await storage.queue()
        finally:
            cluster.start()
        ids = await storage.enqueue(new_message(account.id))
        self.assertEqual((await storage.recipient(ids[0])).state, "queued")
        self.assertEqual(len(await storage.queue()), 2)
