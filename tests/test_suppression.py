"""The suppression list: storage on both backends, the rules over the event feed on a fake clock,
and the in-memory list delivery reads (with another process's writes)."""

from __future__ import annotations

from typing import Any

from twisted.internet import task

from smtpeter.events.model import ABUSE, BOUNCE, DEFERRED, DELIVERY, FAILURE, UNSUBSCRIBE
from smtpeter.ids import new_id
from smtpeter.storage import NotFound, Storage
from smtpeter.storage.models import NewEvent
from smtpeter.storage.suppressions import Strike, Suppression, add_strikes, add_suppressions, suppression_key
from smtpeter.suppressions.registry import CHECK_INTERVAL, SuppressionList
from smtpeter.suppressions.rules import RuleSettings, SuppressionRules
from tests.support.backends import both_backends

DAY = 86400.0
WINDOW = 7 * DAY
SETTINGS = RuleSettings(hard_failure_window=WINDOW, hardbounce_expiry=90 * DAY)


def failure(address: str, status: str, reason: str, hard: bool, kind: str = "failed") -> dict[str, Any]:
    """A failure event's data as events/model.py makes it."""
    return {"recipient": address, "envelope": "news@example.com", "code": int(status[0]) * 100 + 50,
            "status": status, "description": f"{status} {reason}", "state": "rcptto", "type": kind,
            "reason": reason, "hardbounce": hard, "tags": []}


def bounce(address: str, status: str, reason: str, hard: bool) -> dict[str, Any]:
    """A bounce event's data, with the keys the bounce receiver gives it."""
    return {"recipient": address, "envelope": "news@example.com", "reason": reason, "hardbounce": hard,
            "status": status, "replycode": "550", "diagnostic": f"{status} {reason}", "feedbacktype": "",
            "tags": []}


class SuppressionStorageSuite:
    async def setup(self, clock: Any = None) -> tuple[Storage, str, str]:
        self.clock = clock or task.Clock()
        self.clock.advance(1_700_000_000)
        storage = await self.open_storage(clock=self.clock)
        acme = await storage.create_account("acme")
        other = await storage.create_account("other")
        return storage, acme.id, other.id

    async def test_add_find_list_remove(self) -> None:
        storage, acme, other = await self.setup()
        now = self.clock.seconds()
        added = await storage.add_suppression(Suppression(acme, "John.Doe@Example.COM", "manual", "cli", now))
        self.assertEqual(added.address, "John.Doe@example.com")  # the local part as given
        # Found whatever the case, as receiving systems match mailboxes.
        self.assertEqual((await storage.suppression(acme, "john.doe@EXAMPLE.com")).reason, "manual")
        with self.assertRaises(NotFound):
            await storage.suppression(other, "john.doe@example.com")  # another account's list
        await storage.add_suppression(Suppression(acme, "a@example.net", "complaint", "m1", now))
        self.assertEqual([e.address for e in await storage.suppressions(acme)],
                         ["a@example.net", "John.Doe@example.com"])
        after = await storage.suppressions(acme, limit=1, after="a@example.net")
        self.assertEqual([e.address for e in after], ["John.Doe@example.com"])
        self.assertEqual(await storage.suppressions(other), [])
        self.assertEqual(set(await storage.suppressed(acme, ["A@example.NET", "b@example.net"])),
                         {"a@example.net"})
        with self.assertRaises(NotFound):
            await storage.remove_suppression(other, "a@example.net")
        await storage.remove_suppression(acme, "A@Example.net")
        with self.assertRaises(NotFound):
            await storage.remove_suppression(acme, "a@example.net")
        self.assertEqual([e.address for e in await storage.suppressions(acme)], ["John.Doe@example.com"])

    async def test_expiry(self) -> None:
        storage, acme, _ = await self.setup()
        now = self.clock.seconds()
        await storage.add_suppression(Suppression(acme, "soon@example.com", "hardbounce", "m1", now,
                                                  now + 60))
        self.assertEqual(len(await storage.suppressions(acme)), 1)
        self.clock.advance(61)
        self.assertEqual(await storage.suppressions(acme), [])
        with self.assertRaises(NotFound):
            await storage.suppression(acme, "soon@example.com")
        self.assertEqual(await storage.suppressed(acme, ["soon@example.com"]), {})
        await storage.prune_suppressions()
        rows = await storage.db.query("SELECT COUNT(*) FROM suppressions")
        self.assertEqual(rows[0][0], 0)

    async def test_rules_lengthen_but_never_shorten(self) -> None:
        storage, acme, _ = await self.setup()
        now = self.clock.seconds()
        await storage.db.transaction(add_suppressions([Suppression(acme, "x@example.com", "hardbounce", "m1",
                                                                   now, now + 100)]))
        await storage.db.transaction(add_suppressions([Suppression(acme, "x@example.com", "hardbounce", "m2",
                                                                   now, now + 50)]))
        self.assertEqual((await storage.suppression(acme, "x@example.com")).expires, now + 100)
        await storage.db.transaction(add_suppressions([Suppression(acme, "x@example.com", "complaint", "m3",
                                                                   now)]))
        entry = await storage.suppression(acme, "x@example.com")
        self.assertEqual((entry.reason, entry.expires), ("complaint", None))
        await storage.db.transaction(add_suppressions([Suppression(acme, "x@example.com", "hardbounce", "m4",
                                                                   now, now + 500)]))
        self.assertEqual((await storage.suppression(acme, "x@example.com")).reason, "complaint")
        # A manual add replaces what is there.
        await storage.add_suppression(Suppression(acme, "x@example.com", "manual", "api", now, now + 5))
        self.assertEqual((await storage.suppression(acme, "x@example.com")).expires, now + 5)

    async def test_revisions_move_with_every_change(self) -> None:
        storage, acme, other = await self.setup()
        self.assertEqual(await storage.suppression_revisions([acme, other]), {acme: 0, other: 0})
        await storage.add_suppression(Suppression(acme, "a@example.com", "manual", "cli", 1.0))
        await storage.remove_suppression(acme, "a@example.com")
        revisions = await storage.suppression_revisions([acme, other])
        self.assertEqual(revisions[other], 0)
        self.assertGreaterEqual(revisions[acme], 2)

    async def test_strikes_kept_once_and_forgotten(self) -> None:
        storage, acme, _ = await self.setup()
        now = self.clock.seconds()
        key = suppression_key("a@example.com")
        strike = Strike(acme, key, "m1", now - 10)
        await storage.db.transaction(add_strikes([strike, strike, Strike(acme, key, "m0", now - 1000)],
                                                 forget_before=now - 100))
        self.assertEqual(await storage.strikes(acme, [key], now - WINDOW), [strike])

    async def test_unsubscribe_recorded_once(self) -> None:
        storage, acme, _ = await self.setup()
        message_id = new_id()
        event = NewEvent(acme, message_id, "a@example.com", UNSUBSCRIBE, {"recipient": "a@example.com"})
        self.assertTrue(await storage.record_unsubscribe(event))
        self.assertFalse(await storage.record_unsubscribe(event))
        self.assertEqual(len(await storage.events(message_id, acme, [UNSUBSCRIBE])), 1)


class SuppressionRulesSuite:
    """The rules over the feed, on a fake clock, with the real storage and feed position."""

    async def setup(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.storage = await self.open_storage(clock=self.clock)
        self.account = (await self.storage.create_account("acme")).id
        self.rules = SuppressionRules(self.storage, self.clock, SETTINGS)

    async def event(self, kind: str, data: dict[str, Any], account: str | None = None) -> None:
        await self.storage.record_events([NewEvent(account or self.account, new_id(), data["recipient"], kind,
                                                   data)])

    async def run_rules(self) -> None:
        """One pass of the consumer: read what is new, apply, save the position with the effects."""
        events = await self.rules.feed.read()
        if events:
            await self.rules.feed.commit(events[-1].position, await self.rules.consume(events))

    async def reason(self, address: str, account: str | None = None) -> str | None:
        try:
            return (await self.storage.suppression(account or self.account, address)).reason
        except NotFound:
            return None

    async def test_one_user_unknown_is_enough(self) -> None:
        await self.setup()
        await self.event(FAILURE, failure("gone@example.com", "5.1.1", "userunknown", True))
        await self.event(BOUNCE, bounce("Later@Example.com", "5.0.0", "userunknown", True))
        await self.event(BOUNCE, bounce("status@example.com", "5.1.1", "undefined", False))
        await self.run_rules()
        self.assertEqual(await self.reason("gone@example.com"), "userunknown")
        self.assertEqual(await self.reason("later@example.com"), "userunknown")
        self.assertEqual(await self.reason("status@example.com"), "userunknown")
        entry = await self.storage.suppression(self.account, "gone@example.com")
        self.assertIsNone(entry.expires)
        self.assertEqual(entry.created, self.clock.seconds())

    async def test_one_soft_or_one_other_hard_failure_does_not(self) -> None:
        await self.setup()
        await self.event(FAILURE, failure("full@example.com", "5.2.2", "mailboxfull", False))
        await self.event(FAILURE, failure("host@example.com", "5.4.4", "hostunknown", True))
        await self.event(DEFERRED, failure("slow@example.com", "4.2.0", "blocked", False))
        await self.event(FAILURE, failure("old@example.com", "5.1.1", "userunknown", True, kind="expired"))
        await self.event(DELIVERY, {"recipient": "fine@example.com"})
        await self.run_rules()
        for address in ("full@example.com", "host@example.com", "slow@example.com", "old@example.com",
                        "fine@example.com"):
            self.assertIsNone(await self.reason(address), address)

    async def test_two_hard_failures_within_the_window(self) -> None:
        await self.setup()
        await self.event(FAILURE, failure("host@example.com", "5.4.4", "hostunknown", True))
        await self.run_rules()
        self.assertIsNone(await self.reason("host@example.com"))
        self.clock.advance(WINDOW - 60)
        # A bounce of another message to the same address (other case) is the second.
        await self.event(BOUNCE, bounce("HOST@example.com", "5.4.4", "hostunknown", True))
        await self.run_rules()
        entry = await self.storage.suppression(self.account, "host@example.com")
        self.assertEqual(entry.reason, "hardbounce")
        self.assertEqual(entry.expires, self.clock.seconds() + SETTINGS.hardbounce_expiry)

    async def test_two_hard_failures_in_one_batch(self) -> None:
        await self.setup()
        for _ in range(2):
            await self.event(FAILURE, failure("x@example.com", "5.7.1", "rejected", True))
        await self.run_rules()
        self.assertEqual(await self.reason("x@example.com"), "hardbounce")

    async def test_two_hard_failures_outside_the_window(self) -> None:
        await self.setup()
        await self.event(FAILURE, failure("host@example.com", "5.4.4", "hostunknown", True))
        await self.run_rules()
        self.clock.advance(WINDOW + 60)
        await self.event(FAILURE, failure("host@example.com", "5.4.4", "hostunknown", True))
        await self.run_rules()
        self.assertIsNone(await self.reason("host@example.com"))
        # The first one is forgotten; a third within the window of the second suppresses.
        self.clock.advance(60)
        await self.event(FAILURE, failure("host@example.com", "5.4.4", "hostunknown", True))
        await self.run_rules()
        self.assertEqual(await self.reason("host@example.com"), "hardbounce")
        rows = await self.storage.db.query("SELECT COUNT(*) FROM suppression_strikes")
        self.assertEqual(rows[0][0], 2)

    async def test_complaints_and_unsubscribes(self) -> None:
        await self.setup()
        other = (await self.storage.create_account("other")).id
        await self.event(ABUSE, {"recipient": "angry@example.com", "feedbacktype": "abuse"})
        await self.event(UNSUBSCRIBE, {"recipient": "done@example.com"}, account=other)
        await self.run_rules()
        self.assertEqual(await self.reason("angry@example.com"), "complaint")
        self.assertEqual(await self.reason("done@example.com", other), "unsubscribe")
        self.assertIsNone(await self.reason("done@example.com"))  # only the account it happened in

    async def test_events_are_handled_once_after_a_restart(self) -> None:
        await self.setup()
        await self.event(FAILURE, failure("host@example.com", "5.4.4", "hostunknown", True))
        await self.run_rules()
        # A new consumer (a restart) goes on from the saved position: the first failure is not read again.
        self.rules = SuppressionRules(self.storage, self.clock, SETTINGS)
        await self.run_rules()
        self.assertEqual(await self.rules.feed.read(), [])
        rows = await self.storage.db.query("SELECT COUNT(*) FROM suppression_strikes")
        self.assertEqual(rows[0][0], 1)
        self.assertIsNone(await self.reason("host@example.com"))

    async def test_the_list_sees_rules_at_once_and_other_processes_soon(self) -> None:
        await self.setup()
        changed: list[set[str]] = []
        listing = SuppressionList(self.storage, self.clock)
        self.rules = SuppressionRules(self.storage, self.clock, SETTINGS,
                                      changed=lambda accounts: (changed.append(accounts),
                                                                listing.changed(accounts)))
        self.assertEqual(await listing.suppressed(self.account, ["a@example.com"]), {})
        await self.event(ABUSE, {"recipient": "a@example.com", "feedbacktype": "abuse"})
        await self.run_rules()
        self.assertEqual(changed, [{self.account}])
        self.assertEqual(set(await listing.suppressed(self.account, ["A@example.com", "b@example.com"])),
                         {"A@example.com"})
        # Another process (the CLI) writes to the same database: seen once the copy is checked again.
        await self.storage.add_suppression(Suppression(self.account, "b@example.com", "manual", "cli",
                                                       self.clock.seconds()))
        self.assertEqual(await listing.suppressed(self.account, ["b@example.com"]), {})
        self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(set(await listing.suppressed(self.account, ["b@example.com"])), {"b@example.com"})
        await listing.remove(self.account, "b@example.com")
        self.assertEqual(await listing.suppressed(self.account, ["b@example.com"]), {})


SuppressionStorageSQLite, SuppressionStoragePostgreSQL = both_backends(SuppressionStorageSuite)
SuppressionRulesSQLite, SuppressionRulesPostgreSQL = both_backends(SuppressionRulesSuite)
