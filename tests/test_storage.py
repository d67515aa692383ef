"""The storage suite: every test runs on SQLite and on a real PostgreSQL cluster."""

from __future__ import annotations

import datetime
import json
import math
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from smtpeter import credentials
from smtpeter.domains.model import ACTIVE, NEXT, RETIRED, DkimKey, DmarcPolicy, DomainStatus
from smtpeter.envelope import Envelope, MessageOptions, Recipient
from smtpeter.events.model import ATTEMPT, accept
from smtpeter.ids import new_id
from smtpeter.storage import (
    Conflict,
    NotFound,
    StorageError,
    StorageUnavailable,
    event_json,
    open_storage,
    queue,
    webhooks,
)
from smtpeter.storage.db import SQL
from smtpeter.storage.events import event_row
from smtpeter.storage.hosted import HostedImage
from smtpeter.storage.models import Lease, NewMessage, Outcome, Position
from smtpeter.storage.schema import LATEST, MIGRATIONS, _ddl, current_version, migrate
from tests.support import postgres
from tests.support.backends import BackendMixin, both_backends
from tests.support.clock import ShiftedClock


def new_message(account_id: str, recipients: int = 1, body: bytes = b"hello\r\n",
                tags: tuple[str, ...] = ("news", "nov"), to: tuple[str, ...] = ()) -> NewMessage:
    return accept(NewMessage(
        account_id=account_id,
        source="smtp",
        envelope=Envelope(
            "sender@example.com",
            tuple(Recipient(address, notify="FAILURE", orcpt=f"rfc822;{address}")
                  for address in to or [f"r{i}@example.net" for i in range(recipients)]),
            ret="HDRS", envid="env-1", body="8BITMIME"),
        mime=b"From: a@example.com\r\nSubject: t\r\n\r\n" + body,
        options=MessageOptions(trackclicks=True, inlinecss=False),
        tags=list(tags),
    ))


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
        password = await storage.create_smtp_login(account.id, "acme", MessageOptions(trackclicks=True))
        login = await storage.smtp_login("acme")
        self.assertEqual(login.account_id, account.id)
        self.assertEqual(login.options, MessageOptions(trackclicks=True))
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
        (later,) = await storage.enqueue(new_message(account.id))
        newest = await storage.queue(limit=2, newest_first=True)
        self.assertEqual(newest[0].id, later)
        self.assertEqual([q.id for q in await storage.queue(limit=1)], [queued[0].id])
        first = await storage.recipient(ids[0])
        self.assertEqual((first.address, first.state, first.attempts), ("r0@example.net", "queued", 0))
        content = await storage.message_content(ids[2])
        self.assertEqual(content.mime, b"From: a@example.com\r\nSubject: t\r\n\r\nhello\r\n")
        self.assertEqual(content.options.as_dict(), {"trackclicks": True, "inlinecss": False})
        self.assertEqual(content.tags, ["news", "nov"])
        self.assertEqual((content.envelope.body, content.envelope.ret, content.envelope.envid),
                         ("8BITMIME", "HDRS", "env-1"))
        rows = await storage.db.query("SELECT notify, orcpt FROM recipients WHERE id = ?", (ids[1],))
        self.assertEqual(rows, [("FAILURE", "rfc822;r1@example.net")])
        events = await storage.events(ids[0])
        self.assertEqual([e.type for e in events], ["attempt"])
        self.assertEqual(events[0].data["properties"], "trackclicks")
        # Without its own expiry a message is tried for delivery.max_deliver_time.
        self.assertEqual(content.expires, content.created + 86400)
        storage.max_deliver_time = 3600.0
        (short,) = await storage.enqueue(new_message(account.id))
        content = await storage.message_content(short)
        self.assertEqual(content.expires, content.created + 3600)

    async def test_enqueue_all_is_all_or_nothing(self) -> None:
        storage = await self.open_storage()
        account = await storage.create_account("acme")
        groups = await storage.enqueue_all([new_message(account.id, recipients=2), new_message(account.id)])
        self.assertEqual([len(ids) for ids in groups], [2, 1])
        self.assertEqual(len(await storage.queue()), 3)
        # One message that cannot be stored (no such account) takes the others with it.
        with self.assertRaises(Conflict):
            await storage.enqueue_all([new_message(account.id), new_message("no-such-account")])
        self.assertEqual(len(await storage.queue()), 3)
        self.assertEqual(len(await storage.queue()), len(await storage.queue(account_id=account.id)))

    async def test_event_queries(self) -> None:
        storage = await self.open_storage()
        account = await storage.create_account("acme")
        tagged = new_message(account.id, tags=("50%_off", 'say "hi"', "a\\b", "café"),
                             to=("Jane.Doe@Example.net",))
        (first,) = await storage.enqueue(tagged)
        (second,) = await storage.enqueue(new_message(account.id))
        until = storage.now() + 1

        async def ids(**kwargs: object) -> list[str]:
            return [e.message_id for e in await storage.account_events(account.id, 0, until, **kwargs)]

        self.assertEqual(await ids(), [first, second])
        self.assertEqual(await ids(recipient="jane.doe@example.net"), [first])
        self.assertEqual(await ids(recipient="JANE.DOE@EXAMPLE.NET"), [first])
        self.assertEqual((await storage.events(first))[0].data["recipient"], "Jane.Doe@Example.net")
        for tags, expected in ((["50%_off"], [first]), (['say "hi"', "a\\b"], [first]), (["café"], [first]),
                               (["news"], [second]),
                               (["50%"], []), (["%"], []), (["_"], []), (["50%_off", "news"], [])):
            self.assertEqual(await ids(tags=tags), expected, tags)
        # A row written with the standard library's json (a non-ASCII tag \u-escaped) is found too.
        row = event_row(account.id, second, "x@example.net", ATTEMPT, storage.now(), {"tags": ["café"]})
        self.assertNotIn("caf\\u00e9", row[-1])
        await storage.record_event_rows([(*row[:-1], json.dumps({"tags": ["café"]}))])
        self.assertEqual(await ids(tags=["café"]), [first, second])
        self.assertEqual(await ids(limit=1), [first])
        for bogus in ("x", "0" * 17 + "\x00", "'; DROP TABLE events; --"):
            with self.assertRaises(NotFound):
                await storage.events(bogus)
            with self.assertRaises(NotFound):
                await storage.recipient(bogus)

    async def test_binary_content_round_trips(self) -> None:
        storage = await self.open_storage()
        account = await storage.create_account("acme")
        body = bytes(range(1, 256)) * 64 + b"\r\n"
        ids = await storage.enqueue(new_message(account.id, body=body))
        content = await storage.message_content(ids[0])
        self.assertTrue(content.mime.endswith(body))

    async def test_concurrent_enqueues_share_commits(self) -> None:
        storage = await self.open_storage()
        account = await storage.create_account("acme")
        commits = []
        original = storage.db.transaction

        async def counting(statements, durable=True):  # type: ignore[no-untyped-def]
            commits.append(len(statements))
            return await original(statements, durable)

        storage.db.transaction = counting
        results = await defer.gatherResults(
            [storage.enqueue(new_message(account.id)) for _ in range(200)], consumeErrors=True
        )
        self.assertEqual(len({ids[0] for ids in results}), 200)
        self.assertLess(len(commits), 20, "200 concurrent enqueues should need only a few commits")
        self.assertEqual(len(await storage.queue(limit=1000)), 200)

    async def test_big_messages_are_committed_in_smaller_batches(self) -> None:
        storage = await self.open_storage()
        account = await storage.create_account("acme")
        storage._group_commit._max_bytes = 1000
        results = await defer.gatherResults(
            [storage.enqueue(new_message(account.id, body=b"x" * 600 + b"\r\n")) for _ in range(3)]
            + [storage.enqueue(new_message(account.id)) for _ in range(5)])
        self.assertEqual(len(results), 8)
        # Each big one alone (with smaller ones joining up to the limit), never all in one.
        self.assertGreaterEqual(storage._group_commit.commits, 3)
        self.assertEqual(len(await storage.queue()), 8)

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
        self.assertEqual((await storage.message_content(ids[1])).envelope.sender, "sender@example.com")
        await storage.delete_recipient(ids[1])
        rows = await storage.db.query("SELECT COUNT(*) FROM messages WHERE account_id = ?", (acme.id,))
        self.assertEqual(rows[0][0], 0)
        with self.assertRaises(NotFound):
            await storage.delete_recipient(ids[1])

    async def test_hosted_images_are_kept_once_and_go_with_their_message(self) -> None:
        storage = await self.open_storage()
        account = await storage.create_account("acme")
        (rid,) = await storage.enqueue(new_message(account.id))
        message_id = (await storage.message_content(rid)).id
        png = bytes(range(256)) * 4
        await storage.store_hosted_images(message_id, [HostedImage(0, "image/png", png),
                                                       HostedImage(2, "image/gif", b"GIF89a")])
        # Another node storing the same image again changes nothing.
        await storage.store_hosted_images(message_id, [HostedImage(0, "image/jpeg", b"other")])
        self.assertEqual(await storage.hosted_image(message_id, 0), HostedImage(0, "image/png", png))
        self.assertEqual((await storage.hosted_image(message_id, 2)).data, b"GIF89a")
        self.assertIsNone(await storage.hosted_image(message_id, 1))
        with self.assertRaises(NotFound):
            await storage.hosted_image("'; --", 0)
        await storage.delete_recipient(rid)
        self.assertIsNone(await storage.hosted_image(message_id, 0))

    async def test_closed_storage_is_unavailable_not_silent(self) -> None:
        storage = await self.open_storage()
        account = await storage.create_account("acme")
        await storage.close()
        with self.assertRaises(StorageUnavailable):
            await storage.enqueue(new_message(account.id))


class DeliveryStorageSuite:
    """Leases, outcomes and releases: what the scheduler relies on."""

    async def setup(self, recipients: int = 3) -> tuple:
        clock = ShiftedClock()
        storage = await self.open_storage(clock=clock)
        account = await storage.create_account("acme")
        ids = await storage.enqueue(new_message(account.id, recipients=recipients))
        return storage, clock, account, ids

    async def test_claim_leases_due_recipients_once(self) -> None:
        storage, clock, _, ids = await self.setup()
        leases = await storage.claim("node-a", limit=2, lease=600)
        self.assertEqual(len(leases), 2)
        self.assertEqual(leases[0].recipient.notify, "FAILURE")
        more = await storage.claim("node-b", limit=10, lease=600)
        self.assertEqual(len(more), 1)
        self.assertEqual(sorted(x.id for x in leases + more), sorted(ids))
        self.assertEqual(await storage.claim("node-b", limit=10, lease=600), [])
        # A lease that runs out (its node died) makes the recipient due again.
        clock.advance(601)
        self.assertEqual(len(await storage.claim("node-b", limit=10, lease=600)), 3)

    async def test_claim_skips_excluded_domains_and_future_retries(self) -> None:
        storage, clock, _, _ = await self.setup()
        self.assertEqual(await storage.claim("n", limit=10, lease=60, exclude_domains=["example.net"]), [])
        leases = await storage.claim("n", limit=10, lease=60)
        await storage.record("n", [
            Outcome(x.id, x.account_id, x.address, "queued", 1, clock.seconds() + 300, "failure",
                    {"type": "deferred"}) for x in leases])
        clock.advance(61)
        self.assertEqual(await storage.claim("n", limit=10, lease=60), [])
        clock.advance(240)
        self.assertEqual(len(await storage.claim("n", limit=10, lease=60)), 3)

    async def test_claim_around_excluded_domains(self) -> None:
        """Reading only the rest of the queue (when it is small) or reading past the excluded
        domains' rows (when it is not), a claim takes the same rows in the same order."""
        await self.claims_around_excluded_domains()
        self.patch(queue, "CLAIM_BESIDES", 1)
        await self.claims_around_excluded_domains()

    async def claims_around_excluded_domains(self) -> None:
        clock = ShiftedClock()
        storage = await self.open_storage(clock=clock)
        account = await storage.create_account("acme")
        for address in ("b1@busy.example", "a@a.example", "z@zz.example", "later@c.example",
                        "b2@busy.example", "c@c.example"):
            await storage.enqueue(new_message(account.id, to=(address,)))
            clock.advance(1)

        async def claim(limit: int) -> list[Lease]:
            return await storage.claim("n", limit, 60, exclude_domains=["zz.example", "busy.example"])

        (waiting,) = await claim(1)
        self.assertEqual(waiting.address, "a@a.example")
        await storage.record("n", [Outcome(waiting.id, account.id, waiting.address, "queued", 1,
                                           clock.seconds() + 600, "deferred", {})])
        self.assertEqual([x.address for x in await claim(1) + await claim(5)],
                         ["later@c.example", "c@c.example"])
        self.assertEqual(await claim(5), [])
        self.assertEqual(len(await storage.claim("n", limit=5, lease=60)), 3)

    async def test_record_outcomes_events_and_notices(self) -> None:
        storage, clock, account, _ids = await self.setup(recipients=2)
        a, b = await storage.claim("n", limit=10, lease=60)
        notice = accept(NewMessage(account.id, "dsn", Envelope("", (Recipient("sender@example.com"),)),
                                   b"From: MAILER-DAEMON@mx.test\r\n\r\nDSN\r\n"))
        await storage.record("n", [
            Outcome(a.id, a.account_id, a.address, "delivered", 1, clock.seconds(), "delivery",
                    {"code": 250, "to": "127.0.0.2"}, code=250, status="2.0.0", description="ok",
                    smtp_state="message"),
            Outcome(b.id, b.account_id, b.address, "failed", 1, clock.seconds(), "failure",
                    {"code": 550, "state": "rcptto"}, code=550, status="5.1.1",
                    description="user unknown", smtp_state="rcptto"),
        ], notices=[notice])
        first, second = await storage.recipient(a.id), await storage.recipient(b.id)
        self.assertEqual((first.state, first.attempts, first.last_code), ("delivered", 1, 250))
        self.assertEqual((second.state, second.last_status, second.last_description),
                         ("failed", "5.1.1", "user unknown"))
        events = await storage.events(b.id)
        self.assertEqual([e.type for e in events], ["attempt", "failure"])
        self.assertEqual((events[1].recipient, events[1].data["state"]), (b.address, "rcptto"))
        queued = await storage.queue()
        self.assertEqual([q.address for q in queued], ["sender@example.com"])
        self.assertEqual((await storage.message_content(queued[0].id)).envelope.sender, "")
        window = await storage.account_events(account.id, 0, clock.seconds() + 1, types=["failure"])
        self.assertEqual([e.message_id for e in window], [b.id])

    async def test_record_only_touches_rows_the_owner_holds(self) -> None:
        storage, clock, _, _ = await self.setup(recipients=1)
        (lease,) = await storage.claim("node-a", limit=1, lease=60)
        clock.advance(61)
        await storage.claim("node-b", limit=1, lease=60)
        await storage.record("node-a", [Outcome(lease.id, lease.account_id, lease.address, "delivered", 1,
                                                clock.seconds(), "delivery", {})])
        self.assertEqual((await storage.recipient(lease.id)).state, "queued")
        # Nor does it report an outcome that did not take.
        self.assertEqual([e.type for e in await storage.events(lease.id)], ["attempt"])

    async def test_release_and_release_all(self) -> None:
        storage, clock, _, _ = await self.setup()
        leases = await storage.claim("n", limit=10, lease=600)
        await storage.release("n", [leases[0].id], clock.seconds() + 30)
        self.assertEqual(await storage.claim("m", limit=10, lease=600), [])
        clock.advance(31)
        self.assertEqual([x.id for x in await storage.claim("m", limit=10, lease=600)], [leases[0].id])
        await storage.release_all("n")
        self.assertEqual(len(await storage.claim("m", limit=10, lease=600)), 2)

    async def test_messages_fetch(self) -> None:
        storage, _, account, _ids = await self.setup(recipients=2)
        leases = await storage.claim("n", limit=10, lease=60)
        found = await storage.messages([x.message_id for x in leases])
        (message,) = found.values()
        self.assertEqual(message.account_id, account.id)
        self.assertEqual((message.envelope.ret, message.envelope.sender), ("HDRS", "sender@example.com"))
        self.assertTrue(message.mime.startswith(b"From: a@example.com"))


def dkim_key(domain: str, selector: str, **changes: object) -> DkimKey:
    fields = {"algorithm": "rsa", "private_key": b"", "public_record": f"v=DKIM1; k=rsa; p={selector}",
              "managed": True, "state": NEXT, "always": False, "created": 1000.0}
    fields.update(changes)
    return DkimKey(domain=domain, selector=selector, **fields)


class DomainStorageSuite:
    """Sender domains' settings, their last DNS check and their DKIM keys (sealed)."""

    async def test_settings_defaults_and_changes(self) -> None:
        storage = await self.open_storage()
        acme = await storage.create_account("acme")
        other = await storage.create_account("other")
        await storage.add_domain(acme.id, "Example.COM")
        settings = await storage.domain_settings(acme.id, "EXAMPLE.com")
        self.assertEqual((settings.domain, settings.account_id, settings.approved),
                         ("example.com", acme.id, False))
        self.assertEqual((settings.bounces, settings.tracking, settings.https),
                         ("bounces.example.com", "clicks.example.com", False))
        self.assertEqual((settings.dmarc, settings.spf_mechanisms), (DmarcPolicy(), ()))
        dmarc = DmarcPolicy("quarantine", 50, datetime.date(2026, 6, 1), datetime.date(2026, 7, 1),
                            ("reports@example.com", "dmarc@thirdparty.example"))
        changed = await storage.update_domain_settings(
            acme.id, "example.com", bounces="b.example.com", tracking="t.example.com", https=True,
            dmarc=dmarc, spf_mechanisms=["ip4:192.0.2.0/24", "include:_spf.example.net"])
        self.assertEqual(changed, await storage.domain_settings(acme.id, "example.com"))
        self.assertEqual((changed.bounces, changed.tracking, changed.https),
                         ("b.example.com", "t.example.com", True))
        self.assertEqual(changed.dmarc, dmarc)
        self.assertEqual(changed.spf_mechanisms, ("ip4:192.0.2.0/24", "include:_spf.example.net"))
        # What is not given stays as it is; a ramp without dates is kept without them.
        again = await storage.update_domain_settings(acme.id, "example.com", https=False,
                                                     dmarc=DmarcPolicy("reject"))
        self.assertEqual((again.bounces, again.https, again.dmarc),
                         ("b.example.com", False, DmarcPolicy("reject")))
        self.assertEqual(again.spf_mechanisms, changed.spf_mechanisms)
        self.assertEqual(await storage.update_domain_settings(acme.id, "example.com"), again)
        await storage.add_domain(acme.id, "a.example")
        await storage.add_domain(other.id, "other.example")
        self.assertEqual([s.domain for s in await storage.domain_settings_list(acme.id)],
                         ["a.example", "example.com"])
        self.assertEqual((await storage.domain_settings_list(acme.id))[1], again)
        self.assertEqual([s.domain for s in await storage.all_sender_domains()],
                         ["a.example", "example.com", "other.example"])
        self.assertEqual(await storage.sender_domain("Example.com"), again)
        self.assertEqual((await storage.sender_domain("other.example")).account_id, other.id)
        self.assertIsNone(await storage.sender_domain("nowhere.example"))
        # Another account's domain is not found, whatever is asked of it.
        with self.assertRaises(NotFound):
            await storage.domain_settings(other.id, "example.com")
        with self.assertRaises(NotFound):
            await storage.update_domain_settings(other.id, "example.com", https=True)
        with self.assertRaises(NotFound):
            await storage.update_domain_settings(other.id, "example.com")
        with self.assertRaises(NotFound):
            await storage.delete_domain(other.id, "example.com")
        self.assertFalse((await storage.domain_settings(acme.id, "example.com")).https)

    async def test_migration_5_gives_existing_domains_their_defaults(self) -> None:
        url = self.storage_url()
        # A database as version 4 left it, with a domain in it.
        storage = await self.open_storage(url)
        db = storage.db
        # Every table goes, the newest first (the ones that refer to others came after them).
        if db.dialect == "sqlite":
            rows = await db.query("SELECT name FROM sqlite_master "
                                  "WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY rowid DESC")
        else:
            rows = await db.query("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
        cascade = " CASCADE" if db.dialect == "postgresql" else ""
        await db.transaction([SQL(f"DROP TABLE IF EXISTS {row[0]}{cascade}") for row in rows])
        self.assertEqual(await current_version(db), 0)
        for number, statements in enumerate(MIGRATIONS[:4], start=1):
            await db.transaction([SQL(_ddl(db.dialect, ddl)) for ddl in statements]
                                 + [SQL("INSERT INTO schema_version (version) VALUES (?)", (number,))])
        await db.transaction([
            SQL("INSERT INTO accounts (id, name, created) VALUES ('a1', 'acme', 1)"),
            SQL("INSERT INTO sender_domains (domain, account_id, approved, validation_token, created) "
                "VALUES ('old.example', 'a1', 1, 'token', 2)")])
        self.assertEqual(await migrate(db), LATEST)
        settings = await storage.domain_settings("a1", "old.example")
        self.assertEqual((settings.bounces, settings.tracking, settings.https, settings.approved),
                         ("bounces.old.example", "clicks.old.example", False, True))
        self.assertEqual((settings.dmarc, settings.spf_mechanisms), (DmarcPolicy(), ()))
        self.assertIsNone(await storage.domain_status("old.example"))
        # A row an older node writes after the migration (rolling upgrade) reads the same way.
        await db.transaction([SQL(
            "INSERT INTO sender_domains (domain, account_id, approved, validation_token, created) "
            "VALUES ('older.example', 'a1', 0, 'token', 3)")])
        settings = await storage.domain_settings("a1", "older.example")
        self.assertEqual((settings.bounces, settings.tracking),
                         ("bounces.older.example", "clicks.older.example"))

    async def test_dns_status(self) -> None:
        storage = await self.open_storage()
        acme = await storage.create_account("acme")
        await storage.add_domain(acme.id, "example.com")
        self.assertIsNone(await storage.domain_status("example.com"))
        found = DomainStatus("example.com", {"spf": "ok", "dkim": "error"},
                             {"spf": "includes ours", "dkim": "zero._domainkey: no TXT record"},
                             ("zero-ed", "one"), 1234.5)
        await storage.record_domain_status(found)
        self.assertEqual(await storage.domain_status("EXAMPLE.com"), found)
        later = DomainStatus("example.com", {"spf": "ok", "dkim": "ok"}, {}, ("zero",), 2000.0)
        await storage.record_domain_status(later)
        self.assertEqual(await storage.domain_status("example.com"), later)
        # Recording a status does not touch the settings.
        settings = await storage.domain_settings(acme.id, "example.com")
        self.assertEqual(settings.bounces, "bounces.example.com")
        with self.assertRaises(NotFound):
            await storage.record_domain_status(DomainStatus("gone.example", {}, {}, (), 1.0))
        self.assertIsNone(await storage.domain_status("gone.example"))

    async def test_dkim_keys_are_kept_sealed_and_per_account(self) -> None:
        storage = await self.open_storage()
        acme = await storage.create_account("acme")
        other = await storage.create_account("other")
        await storage.add_domain(acme.id, "example.com")
        await storage.add_domain(acme.id, "example.org")
        await storage.add_domain(other.id, "other.example")
        sealed = bytes(range(256)) + b"\x00sealed"
        zero = dkim_key("example.com", "zero", state=ACTIVE, activated=1500.0)
        await storage.add_dkim_key(acme.id, zero, sealed)
        customer = dkim_key("example.com", "Custom", algorithm="ed25519", managed=False, state=ACTIVE,
                            always=True, start=100.0, end=9e9)
        await storage.add_dkim_key(acme.id, customer, b"sealed customer key")
        await storage.add_dkim_key(acme.id, dkim_key("example.org", "zero"), b"org")
        await storage.add_dkim_key(other.id, dkim_key("other.example", "zero"), b"theirs")
        with self.assertRaises(Conflict):
            await storage.add_dkim_key(acme.id, dkim_key("example.com", "zero"), b"again")
        # Only to a domain of the account.
        with self.assertRaises(NotFound):
            await storage.add_dkim_key(other.id, dkim_key("example.com", "one"), b"x")
        with self.assertRaises(NotFound):
            await storage.add_dkim_key(acme.id, dkim_key("nowhere.example", "one"), b"x")
        # Never a private key in the clear.
        with self.assertRaises(ValueError):
            await storage.add_dkim_key(acme.id, dkim_key("example.com", "one", private_key=b"PEM"), b"x")

        rows = await storage.dkim_key_rows("example.com")
        self.assertEqual([(r.key.selector, r.sealed_private_key) for r in rows],
                         [("custom", b"sealed customer key"), ("zero", sealed)])
        self.assertEqual(rows[1].key, zero)
        self.assertEqual(rows[0].key.selector, "custom")
        self.assertEqual((rows[0].key.managed, rows[0].key.always, rows[0].key.start, rows[0].key.end,
                          rows[0].key.algorithm), (False, True, 100.0, 9e9, "ed25519"))
        self.assertTrue(all(r.key.private_key == b"" for r in rows))
        rows = await storage.dkim_key_rows(account_id=acme.id)
        self.assertEqual([(r.key.domain, r.key.selector) for r in rows],
                         [("example.com", "custom"), ("example.com", "zero"), ("example.org", "zero")])
        self.assertEqual(len(await storage.dkim_key_rows()), 4)
        rows = await storage.dkim_key_rows("example.com", selector="ZERO")
        self.assertEqual([r.key.selector for r in rows], ["zero"])
        self.assertEqual(await storage.dkim_key_rows("example.com", account_id=other.id), [])
        self.assertEqual(await storage.dkim_key_rows(account_id=other.id, selector="custom"), [])

        await storage.update_dkim_key("example.com", "zero", state=RETIRED, end=5000.0)
        (row,) = await storage.dkim_key_rows("example.com", selector="zero")
        self.assertEqual((row.key.state, row.key.end, row.key.activated), (RETIRED, 5000.0, 1500.0))
        await storage.update_dkim_key("example.org", "zero", state=ACTIVE, activated=4000.0)
        (row,) = await storage.dkim_key_rows("example.org")
        self.assertEqual((row.key.state, row.key.activated, row.key.end), (ACTIVE, 4000.0, None))
        with self.assertRaises(NotFound):
            await storage.update_dkim_key("example.com", "two", state=ACTIVE)

        with self.assertRaises(NotFound):
            await storage.delete_dkim_key(other.id, "example.com", "zero")
        await storage.delete_dkim_key(acme.id, "example.com", "zero")
        self.assertEqual([r.key.selector for r in await storage.dkim_key_rows("example.com")], ["custom"])
        with self.assertRaises(NotFound):
            await storage.delete_dkim_key(acme.id, "example.com", "zero")
        # A domain's keys go with it, and only its.
        await storage.delete_domain(acme.id, "example.com")
        self.assertEqual(await storage.dkim_key_rows("example.com"), [])
        with self.assertRaises(NotFound):
            await storage.domain_settings(acme.id, "example.com")
        self.assertEqual(len(await storage.dkim_key_rows()), 2)
        # Registered again, it starts without keys.
        await storage.add_domain(other.id, "example.com")
        self.assertEqual(await storage.dkim_key_rows("example.com"), [])


class WebhookStorageSuite:
    """Webhooks per account, their calls (once per event and hook, leased, retried) and attempts."""

    async def hook(self, storage: Any, account_id: str, state: str = webhooks.ACTIVE, kind: str = "delivery",
                   now: float = 1000.0) -> webhooks.StoredWebhook:
        hook = webhooks.StoredWebhook(
            new_id(), account_id, kind, "https://hooks.example/in", state, "file" if state == webhooks.ACTIVE
            else None, "token", "", b"sealed secret", None, None, now if state == webhooks.ACTIVE else None,
            now, now)
        await storage.add_webhook(hook)
        return hook

    @staticmethod
    def calls(hook_id: str, *event_ids: int) -> list[webhooks.NewWebhookCall]:
        return [webhooks.NewWebhookCall(f"msg_{hook_id}_{event_id}", hook_id, event_id, "delivery",
                                        f'{{"id":"x","n":{event_id}}}') for event_id in event_ids]

    async def test_hooks_belong_to_their_account(self) -> None:
        storage = await self.open_storage()
        acme = await storage.create_account("acme")
        other = await storage.create_account("other")
        hook = await self.hook(storage, acme.id, webhooks.PENDING)
        self.assertEqual(await storage.webhook(acme.id, hook.id), hook)
        self.assertEqual(await storage.webhooks(acme.id), [hook])
        self.assertEqual(await storage.webhooks(other.id), [])
        for account, hook_id in ((other.id, hook.id), (acme.id, new_id()), (acme.id, "\x00" * 18)):
            with self.assertRaises(NotFound):
                await storage.webhook(account, hook_id)
        with self.assertRaises(NotFound):
            await storage.delete_webhook(other.id, hook.id)
        with self.assertRaises(NotFound):
            await storage.webhook_attempts(other.id, hook.id)
        with self.assertRaises(NotFound):
            await storage.rotate_webhook_secret(other.id, hook.id, b"new", 2.0, 1.0)
        self.assertEqual(await storage.webhooks_by_id([hook.id, new_id()]), {hook.id: hook})
        # Pending: not among the active hooks events go to.
        self.assertEqual(await storage.active_webhooks([acme.id]), [])
        await storage.delete_webhook(acme.id, hook.id)
        self.assertEqual(await storage.webhooks(acme.id), [])

    async def test_proof_disable_enable_and_rotation(self) -> None:
        storage = await self.open_storage()
        acme = await storage.create_account("acme")
        hook = await self.hook(storage, acme.id, webhooks.PENDING)
        await storage.webhook_unproven(hook.id, "no file", 1001.0)
        self.assertEqual((await storage.webhook(acme.id, hook.id)).problem, "no file")
        proven = await storage.webhook_proven(hook.id, "challenge", 1002.0)
        self.assertEqual((proven.state, proven.proof, proven.problem, proven.active_since),
                         (webhooks.ACTIVE, "challenge", "", 1002.0))
        self.assertIsNone(await storage.webhook_proven(hook.id, "file", 1003.0))  # proven once
        await storage.webhook_unproven(hook.id, "late news", 1003.0)  # an active hook keeps no problem
        self.assertEqual(await storage.webhook(acme.id, hook.id), proven)
        self.assertEqual(await storage.active_webhooks([acme.id, "nobody"]), [proven])
        # A 410 disables it and drops its pending calls.
        await storage.db.transaction([webhooks.insert_webhook_calls(self.calls(hook.id, 1, 2), 1004.0)])
        (first, second) = await storage.claim_webhook_calls(hook.id, "node", 1, 1004.0, 1050.0) + \
            await storage.claim_webhook_calls(hook.id, "node", 1, 1004.0, 1050.0)
        await storage.record_webhook_result(webhooks.CallResult(
            first.id, hook.id, 1, 1005.0, 410, 0.1, "answered 410", webhooks.CALL_CANCELLED, 1005.0,
            disable_hook="gone"))
        disabled = await storage.webhook(acme.id, hook.id)
        self.assertEqual((disabled.state, disabled.problem), (webhooks.DISABLED, "gone"))
        self.assertEqual(await storage.webhook_call_counts(hook.id), {webhooks.CALL_CANCELLED: 2})
        # The other call, still in flight, ends without bringing it back.
        await storage.record_webhook_result(webhooks.CallResult(
            second.id, hook.id, 1, 1006.0, 200, 0.1, "", webhooks.CALL_DELIVERED, 1006.0))
        self.assertEqual(await storage.webhook_call_counts(hook.id), {webhooks.CALL_CANCELLED: 2})
        self.assertEqual(await storage.active_webhooks([acme.id]), [])
        enabled = await storage.enable_webhook(acme.id, hook.id, 2000.0)
        self.assertEqual((enabled.state, enabled.problem, enabled.active_since),
                         (webhooks.ACTIVE, "", 2000.0))
        # A rotation keeps the old secret beside the new one until the time given.
        rotated = await storage.rotate_webhook_secret(acme.id, hook.id, b"new sealed", 3000.0, 2001.0)
        self.assertEqual((rotated.sealed_secret, rotated.sealed_old_secret, rotated.old_secret_until),
                         (b"new sealed", b"sealed secret", 3000.0))
        # Enabling a pending hook does not skip its proof.
        pending = await self.hook(storage, acme.id, webhooks.PENDING)
        self.assertEqual((await storage.enable_webhook(acme.id, pending.id, 2002.0)).state, webhooks.PENDING)

    async def test_calls_once_per_event_and_active_hook(self) -> None:
        storage = await self.open_storage()
        acme = await storage.create_account("acme")
        active = await self.hook(storage, acme.id)
        pending = await self.hook(storage, acme.id, webhooks.PENDING)
        statement = webhooks.insert_webhook_calls(self.calls(active.id, 7, 8) + self.calls(pending.id, 7),
                                                  1000.0)
        await storage.save_feed_position("webhooks", Position(0, 8), [statement])
        # Made again (another node read the same events): no second call for an event.
        again = [webhooks.NewWebhookCall("msg_other", active.id, 7, "delivery", "{}")]
        await storage.db.transaction([webhooks.insert_webhook_calls(again, 1000.0)])
        self.assertEqual(await storage.webhook_call_counts(active.id), {webhooks.CALL_PENDING: 2})
        self.assertEqual(await storage.webhook_call_counts(pending.id), {})
        self.assertEqual(await storage.due_webhook_calls(1000.0), {active.id: 2})
        self.assertEqual(await storage.due_webhook_calls(999.0), {})
        # A deleted hook's calls go with it.
        await storage.delete_webhook(acme.id, active.id)
        self.assertEqual(await storage.webhook_call_counts(active.id), {})

    async def test_leases_results_and_attempts(self) -> None:
        storage = await self.open_storage()
        acme = await storage.create_account("acme")
        hook = await self.hook(storage, acme.id)
        await storage.db.transaction([webhooks.insert_webhook_calls(self.calls(hook.id, 3, 1, 2), 1000.0)])
        claimed = await storage.claim_webhook_calls(hook.id, "node-a", 2, 1000.0, 1045.0)
        self.assertEqual([call.event_id for call in claimed], [1, 2])
        self.assertEqual((claimed[0].payload, claimed[0].attempts), ('{"id":"x","n":1}', 0))
        (third,) = await storage.claim_webhook_calls(hook.id, "node-b", 5, 1000.0, 1045.0)
        self.assertEqual(await storage.claim_webhook_calls(hook.id, "node-b", 5, 1000.0, 1045.0), [])
        self.assertEqual(await storage.next_webhook_call(1000.0), 1045.0)
        # A lease that runs out (its node died) makes the call due again; a restarting node's at once.
        self.assertEqual(await storage.due_webhook_calls(1045.0), {hook.id: 3})
        await storage.release_webhook_calls("node-b", 1001.0)
        self.assertEqual(await storage.due_webhook_calls(1001.0), {hook.id: 1})
        self.assertEqual(await storage.claim_webhook_calls(hook.id, "node-b", 5, 1001.0, 1046.0), [third])
        # Results: retried later, delivered, given up.
        first, second = claimed
        await storage.record_webhook_result(webhooks.CallResult(
            first.id, hook.id, 1, 1002.0, 503, 0.25, "answered 503", webhooks.CALL_PENDING, 1007.0))
        await storage.record_webhook_result(webhooks.CallResult(
            second.id, hook.id, 1, 1003.0, 200, 0.125, "", webhooks.CALL_DELIVERED, 1003.0))
        await storage.record_webhook_result(webhooks.CallResult(
            third.id, hook.id, 8, 1004.0, None, 15.0, "no answer", webhooks.CALL_FAILED, 1004.0))
        self.assertEqual(await storage.due_webhook_calls(1006.0), {})
        (retry,) = await storage.claim_webhook_calls(hook.id, "node-a", 5, 1007.0, 1052.0)
        self.assertEqual((retry.id, retry.attempts), (first.id, 1))
        attempts = await storage.webhook_attempts(acme.id, hook.id)
        self.assertEqual([(a.call_id, a.attempt, a.status, a.error, a.call_state, a.next_attempt)
                          for a in attempts], [
            (third.id, 8, None, "no answer", webhooks.CALL_FAILED, None),
            (second.id, 1, 200, "", webhooks.CALL_DELIVERED, None),
            (first.id, 1, 503, "answered 503", webhooks.CALL_PENDING, 1052.0)])
        self.assertEqual((attempts[1].event_id, attempts[1].event_type, attempts[1].duration),
                         (2, "delivery", 0.125))
        self.assertEqual(len(await storage.webhook_attempts(acme.id, hook.id, limit=1)), 1)
        self.assertEqual(await storage.webhook_call_counts(hook.id), {
            webhooks.CALL_PENDING: 1, webhooks.CALL_DELIVERED: 1, webhooks.CALL_FAILED: 1})
        # Old history goes; calls still pending stay.
        await storage.prune_webhook_history(1003.5)
        self.assertEqual(await storage.webhook_call_counts(hook.id), {
            webhooks.CALL_PENDING: 1, webhooks.CALL_FAILED: 1})
        self.assertEqual([a.call_id for a in await storage.webhook_attempts(acme.id, hook.id)], [third.id])


StorageSQLite, StoragePostgreSQL = both_backends(StorageSuite)
DomainStorageSQLite, DomainStoragePostgreSQL = both_backends(DomainStorageSuite)
DeliveryStorageSQLite, DeliveryStoragePostgreSQL = both_backends(DeliveryStorageSuite)
WebhookStorageSQLite, WebhookStoragePostgreSQL = both_backends(WebhookStorageSuite)


class ConcurrentClaims(BackendMixin, unittest.TestCase):
    """Two nodes on one PostgreSQL never lease the same recipient (SKIP LOCKED)."""

    backend = "postgresql"

    async def test_two_nodes_share_the_queue_without_overlap(self) -> None:
        url = self.storage_url()
        first = await self.open_storage(url)
        second = await self.open_storage(url)
        account = await first.create_account("acme")
        for _ in range(20):
            await first.enqueue(new_message(account.id, recipients=10))
        rounds = await defer.gatherResults([
            defer.Deferred.fromCoroutine(storage.claim(node, limit=7, lease=600))
            for _ in range(20) for node, storage in (("a", first), ("b", second))
        ])
        claimed = [lease.id for leases in rounds for lease in leases]
        self.assertEqual(len(claimed), 200)
        self.assertEqual(len(set(claimed)), 200)


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

    async def test_every_waiter_hears_of_an_outage(self) -> None:
        """With one connection and a dead server, queued requests fail too (they never hang)."""
        cluster = postgres.cluster()
        url = self.storage_url()
        storage = await open_storage(url, reactor, pool_size=1)
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(storage.close()))
        account = await storage.create_account("acme")
        await storage.db.close()
        storage.db = type(storage.db)(url, reactor, size=1)
        cluster.stop("immediate")
        try:
            outcomes = await defer.DeferredList(
                [defer.Deferred.fromCoroutine(storage.queue()) for _ in range(3)]
                + [storage.enqueue(new_message(account.id)) for _ in range(2)],
                consumeErrors=True,
            ).addTimeout(30, reactor)
        finally:
            cluster.start()
        self.assertEqual([ok for ok, _ in outcomes], [False] * 5)
        self.assertTrue(all(f.check(StorageUnavailable) for _, f in outcomes))
        ids = await storage.enqueue(new_message(account.id))
        self.assertEqual(len(ids), 1)


class EventJSONTests(unittest.TestCase):
    def test_round_trips_what_orjson_refuses_through_the_standard_library(self) -> None:
        for data in ({"diagnostic": "550 caf\udce9"},  # a lone surrogate: bytes decoded with surrogateescape
                     {1: "a non-string key"}, {"tags": ["café"], "n": 1.5}):
            text = event_json.encode(data)
            decoded = event_json.decode(text)
            self.assertEqual(decoded, json.loads(json.dumps(data)), data)
        self.assertTrue(math.isnan(event_json.decode('{"x": NaN}')["x"]))  # json.dumps wrote NaN before
        self.assertEqual(json.loads(event_json.encode({"big": 2 ** 70 + 1})), {"big": 2 ** 70 + 1})
