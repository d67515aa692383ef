"""The hit log and the bot rules under it: the indexes that make scoring a hit cheap give the
verdicts the plain rules give (every other hit of the recipient in a list), batches are scored
in slices, a storage failure loses nothing, and hits past MAX_PENDING are counted; a recipient's
events are read by message id on both backends however many events its account has."""

from __future__ import annotations

import gc
import json
import random
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.trial import unittest

from smtpeter.events import hits
from smtpeter.events.bots import (
    AGENT_VERDICTS,
    BURST_SECONDS,
    HONEYPOT_POSITION,
    HONEYPOT_SECONDS,
    BotRules,
    ClickWindow,
    Seen,
)
from smtpeter.events.hits import Hit, HitLog, read_head
from smtpeter.events.metrics import Metrics
from smtpeter.events.model import ATTEMPT, CLICK, DELIVERY, OPEN
from smtpeter.storage import NotFound, StorageUnavailable
from smtpeter.storage.models import Event, NewEvent, Position
from tests.support.backends import both_backends

BROWSER = b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0 Safari/537.36\r\nAccept: */*"
SCANNER = b"User-Agent: Mozilla/5.0 (compatible; Barracuda Sentinel)"
DELIVERED = 1_000.0
RECIPIENT_IDS = ["0" * 17 + str(i) for i in range(3)]
UNKNOWN_ID = "9" * 18  # no such recipient (any more)


def reference_reason(rules: BotRules, hit: Seen, delivered: float | None, others: Sequence[Seen]) -> str:
    """The rules as bots.py states them, over a plain list of the recipient's other hits."""
    if hit.kind == CLICK and (hit.position == HONEYPOT_POSITION or any(
            o.kind == CLICK and o.position == HONEYPOT_POSITION and o.ip == hit.ip
            and abs(o.time - hit.time) <= HONEYPOT_SECONDS for o in others)):
        return "honeypot"
    if hit.method == "HEAD":
        return "head"
    if rules.is_machine_agent(hit.user_agent):
        return "user_agent"
    if delivered is None or hit.time - delivered < rules.seconds:
        return "early"
    if hit.kind == CLICK and any(o.kind == CLICK and o.position != hit.position
                                 and abs(o.time - hit.time) < BURST_SECONDS for o in others):
        return "burst"
    return ""


class FakeStorage:
    """What the hit log asks of storage, for recipients delivered at DELIVERED."""

    def __init__(self) -> None:
        self.rows: list[tuple] = []
        self.failures = 0  # the next this many writes fail
        self.read_failures = 0  # the next this many reads of a recipient fail
        self.reads: list[str] = []
        self.durable: list[bool] = []  # of each write

    async def recipient(self, recipient_id: str) -> Any:
        if self.read_failures:
            self.read_failures -= 1
            raise StorageUnavailable("down for the test")
        if recipient_id == UNKNOWN_ID:
            raise NotFound(recipient_id)
        return SimpleNamespace(account_id="acct", address=f"{recipient_id}@example.net")

    async def events(self, message_id: str, account_id: str | None = None,
                     types: Sequence[str] = ()) -> list[Event]:
        self.reads.append(message_id)
        return [Event(1, "acct", message_id, "x", ATTEMPT, 10.0, {"tags": ["news"]}, Position(1, 1)),
                Event(2, "acct", message_id, "x", DELIVERY, DELIVERED, {"tags": ["news"]}, Position(1, 2))]

    async def record_event_rows(self, rows: Sequence[tuple], durable: bool = True) -> None:
        self.durable.append(durable)
        if self.failures:
            self.failures -= 1
            raise StorageUnavailable("down for the test")
        self.rows.extend(rows)

    def events_written(self) -> list[dict[str, Any]]:
        return [{"recipient_id": row[1], "type": row[3], "time": row[4], **json.loads(row[6])}
                for row in self.rows]


def hit(time: float, kind: str = CLICK, position: int = 1, ip: str = "192.0.2.1", head: bytes = BROWSER,
        method: str = "GET", recipient_id: str = RECIPIENT_IDS[0]) -> Hit:
    return Hit(time, kind, recipient_id, position, method, f"https://t.example/c/{position}",
               f"https://shop.example/{position}", ip, head, False)


class HitLogTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(DELIVERED + 100)
        self.storage = FakeStorage()
        self.metrics = Metrics()
        self.rules = BotRules(seconds=5.0)
        self.log = HitLog(self.storage, self.metrics, self.clock, self.rules)

    def flush(self, everything: bool = True) -> int:
        """HitLog.flush to its end, turning the clock (a batch yields between slices)."""
        done = defer.Deferred.fromCoroutine(self.log.flush(everything=everything))
        while not done.called:
            self.clock.advance(0)
        return self.successResultOf(done)

    def test_verdicts_are_the_plain_rules_verdicts(self) -> None:
        """Random hits of a few recipients (honeypots, bursts, duplicates, opens, HEADs, scanners),
        written in batches and slices: every event says what the rules say over a list."""
        self.patch(hits, "MAX_BATCH", 97)
        self.patch(hits, "SLICE", 13)
        generator = random.Random(20240601)
        now = self.clock.seconds()
        made: list[Hit] = []
        for _ in range(1500):
            if made and generator.random() < 0.05:
                made.append(made[-1])  # the same request twice
                continue
            honeypot = generator.random() < 0.1
            made.append(hit(
                now - 100 + generator.random() * 90,  # DELIVERED is 100 s ago: a few are early
                kind=CLICK if generator.random() < 0.8 else OPEN,
                position=generator.choice([1, 2, 3, HONEYPOT_POSITION] if honeypot else [1, 2, 3]),
                ip=generator.choice(["192.0.2.1", "192.0.2.2"]),
                head=generator.choice([BROWSER] * 8 + [SCANNER]),
                method="HEAD" if generator.random() < 0.02 else "GET",
                recipient_id=generator.choice(RECIPIENT_IDS)))
        made.sort(key=lambda h: h.time)  # as they come: in time order
        for one in made:
            self.log.add(one)
        self.flush()

        seen = [Seen(h.time, h.kind, h.position, h.method, h.ip, read_head(h.head).user_agent) for h in made]
        expected = []
        for index, (one, mine) in enumerate(zip(made, seen, strict=True)):
            others = [s for i, s in enumerate(seen)
                      if i != index and made[i].recipient_id == one.recipient_id]
            reason = reference_reason(self.rules, mine, DELIVERED, others)
            expected.append((one.recipient_id, one.time, one.kind, reason))
        written = self.storage.events_written()
        clicks = [(e["recipient_id"], e["time"], e["type"], e["bot_reason"])
                  for e in written if e["type"] == CLICK]
        self.assertEqual(clicks, [e for e in expected if e[2] == CLICK])
        self.assertEqual({reason for *_, reason in clicks},
                         {"", "honeypot", "head", "user_agent", "early", "burst"})
        opens = {(e["recipient_id"], e["time"]): e["bot_reason"] for e in written if e["type"] == OPEN}
        self.assertTrue(opens)
        for recipient_id, time, kind, reason in expected:
            if kind == OPEN and (recipient_id, time) in opens:  # repeats within OPEN_SECONDS are one open
                self.assertEqual(opens[recipient_id, time], reason)

    def test_written_clicks_count_for_later_ones(self) -> None:
        """The honeypot clicked a minute before, from the same address, and written since: still a bot."""
        now = self.clock.seconds()
        self.log.add(hit(now - 2, position=HONEYPOT_POSITION, ip="192.0.2.9"))
        self.assertEqual(self.flush(everything=False), 1)
        self.clock.advance(HONEYPOT_SECONDS - 5)
        now = self.clock.seconds()
        self.log.add(hit(now - 2, position=1, ip="192.0.2.9"))
        self.log.add(hit(now - 2, position=1, ip="192.0.2.10"))
        self.assertEqual(self.flush(everything=False), 2)
        reasons = [(e["ip"], e["bot_reason"]) for e in self.storage.events_written()]
        self.assertEqual(reasons, [("192.0.2.9", "honeypot"), ("192.0.2.9", "honeypot"), ("192.0.2.10", "")])
        # Much later the window of that recipient is gone, and nothing of it counts any more.
        self.clock.advance(HONEYPOT_SECONDS + 60)
        now = self.clock.seconds()
        self.log.add(hit(now - 2, position=2, ip="192.0.2.9", recipient_id=RECIPIENT_IDS[1]))
        self.flush(everything=False)
        self.assertNotIn(RECIPIENT_IDS[0], self.log._clicks)
        self.assertEqual(self.storage.events_written()[-1]["bot_reason"], "")

    def test_a_recipient_is_read_once_and_an_unknown_one_records_nothing(self) -> None:
        now = self.clock.seconds()
        many = [f"{i:018d}" for i in range(1, 30)]
        for i in range(5):
            self.log.add(hit(now - 10 + 2 * i))
        self.log.add(hit(now - 3, recipient_id=UNKNOWN_ID))
        for recipient_id in many:
            self.log.add(hit(now - 2, recipient_id=recipient_id))
        self.storage.read_failures = 1
        self.assertEqual(self.flush(), 0)  # storage is down: the batch waits
        self.assertEqual(self.flush(), 5 + len(many))
        self.assertEqual(sorted(self.storage.reads), sorted([RECIPIENT_IDS[0], *many]))
        written = self.storage.events_written()
        self.assertEqual({(e["recipient_id"], e["recipient"], tuple(e["tags"])) for e in written},
                         {(rid, f"{rid}@example.net", ("news",)) for rid in [RECIPIENT_IDS[0], *many]})
        self.log.add(hit(self.clock.seconds() - 2, recipient_id=many[0]))
        self.assertEqual(self.flush(), 1)
        self.assertEqual(len(self.storage.reads), 1 + len(many))  # cached

    def test_nothing_is_lost_when_storage_fails(self) -> None:
        """The batch waits for storage; its opens are no repeats of themselves when it is written."""
        now = self.clock.seconds()
        self.log.add(hit(now - 5, kind=OPEN, position=0))
        self.log.add(hit(now - 4, kind=OPEN, position=0))  # the same client, a second image: one open
        self.log.add(hit(now - 3))
        self.storage.failures = 1
        self.assertEqual(self.flush(), 0)
        self.assertEqual(self.storage.rows, [])
        self.assertEqual(self.flush(), 2)
        self.assertEqual([e["type"] for e in self.storage.events_written()], [OPEN, CLICK])
        self.assertEqual(_counter(self.metrics, "smtpeter_opens_total"), 1)
        self.assertEqual(_counter(self.metrics, "smtpeter_clicks_total"), 1)

    def test_hits_past_the_limit_are_counted_and_logged(self) -> None:
        logged: list[dict[str, Any]] = []
        self.patch(hits, "log", Logger(observer=logged.append))
        self.patch(hits, "MAX_PENDING", 3)
        now = self.clock.seconds()
        for i in range(7):
            self.log.add(hit(now - 5 + i / 10))
        self.assertEqual(self.log.dropped, 4)
        self.assertEqual(_counter(self.metrics, "smtpeter_hits_dropped_total"), 4)
        self.assertEqual(len(logged), 1)  # once a minute at most
        self.assertEqual(self.flush(), 3)

    def test_waiting_hits_are_no_work_for_the_garbage_collector(self) -> None:
        """Tens of thousands wait at once: tracked, they would bring on a full collection a second."""
        now = self.clock.seconds()
        for i in range(3):
            self.log.add(hit(now - 1 + i / 10, position=HONEYPOT_POSITION if i == 2 else 1 + i))
        gc.collect()
        gc.collect()  # a tuple of tuples: the inner ones first
        self.assertEqual([gc.is_tracked(waiting) for waiting in self.log._pending], [False] * 3)
        window = self.log._clicks[RECIPIENT_IDS[0]]
        self.assertEqual([gc.is_tracked(spans) for spans in window._slots.values()], [False])
        self.assertFalse(gc.is_tracked(window._honeypots))

    def test_a_big_batch_is_scored_in_slices(self) -> None:
        """The reactor gets a turn between slices: a batch of MAX_BATCH is not one stall."""
        turns = []
        real = task.deferLater

        def counted(clock: Any, delay: float, *args: Any) -> defer.Deferred:
            turns.append(delay)
            return real(clock, delay, *args)

        self.patch(hits.task, "deferLater", counted)
        now = self.clock.seconds()
        for i in range(hits.SLICE * 3 + 1):
            self.log.add(hit(now - 10 + i / 1000))
        self.assertEqual(self.flush(), hits.SLICE * 3 + 1)
        self.assertEqual(turns, [0, 0, 0])
        self.assertEqual(self.storage.durable, [False])  # one transaction, not flushed to disk


class BotRulesTests(unittest.SynchronousTestCase):
    def test_user_agent_verdicts_are_remembered_within_bounds(self) -> None:
        rules = BotRules(["^ExampleBot/"])
        for agent, machine in (("Mozilla/5.0 (compatible; Barracuda)", True), ("Mozilla/5.0", True),
                               ("ExampleBot/1.0", True), ("", True), ("  ", True),
                               ("Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0", False)):
            for _ in range(2):  # asked again: from the cache
                self.assertEqual(rules.is_machine_agent(agent), machine, agent)
        for i in range(AGENT_VERDICTS + 10):
            rules.is_machine_agent(f"Mozilla/5.0 Browser/{i}")
        self.assertEqual(len(rules._verdicts), AGENT_VERDICTS)
        self.assertTrue(rules.is_machine_agent("x" * 5000 + " python-requests/2.0"))
        self.assertEqual(len(rules._verdicts), AGENT_VERDICTS)  # a long one is not kept

    def test_a_window_of_a_list(self) -> None:
        rules = BotRules()
        person = Seen(100.0, CLICK, 2, "GET", "192.0.2.1", "Mozilla/5.0 (X11) Firefox/128.0")
        window = ClickWindow.of([person, Seen(100.9, CLICK, 3, "GET", "192.0.2.2", ""),
                                 Seen(100.0, OPEN, 4, "GET", "192.0.2.1", "")])
        self.assertEqual(rules.reason(person, 0.0, window), "burst")
        self.assertEqual(rules.reason(person, 0.0, ClickWindow.of([person])), "")
        later = Seen(150.0, CLICK, 2, "GET", "192.0.2.1", person.user_agent)
        for honeypot_time, reason in ((90.0, "honeypot"), (210.0, "honeypot"), (89.5, ""), (210.5, "")):
            honeypot = Seen(honeypot_time, CLICK, HONEYPOT_POSITION, "GET", "192.0.2.1", "")
            self.assertEqual(rules.reason(later, 0.0, ClickWindow.of([honeypot])), reason, honeypot_time)
        elsewhere = Seen(170.0, CLICK, HONEYPOT_POSITION, "GET", "192.0.2.7", "")  # another address
        self.assertEqual(rules.reason(later, 0.0, ClickWindow.of([elsewhere])), "")


class ReadHeadTests(unittest.SynchronousTestCase):
    def test_one_pass_over_the_headers(self) -> None:
        head = (b"Host: t.example\r\nUser-Agent:  Browser/1 \r\nCookie: secret=1\r\nno colon here\r\n"
                b"AUTHORIZATION: Bearer x\r\nReferer: https://mail.example/\r\nuser-agent: second\r\n"
                b"X-Caf\xe9: \xe9")
        self.assertEqual(read_head(head), (
            "Host: t.example\nUser-Agent:  Browser/1 \nReferer: https://mail.example/\nuser-agent: second\n"
            "X-Caf\xe9: \xe9", "Browser/1", "https://mail.example/"))
        self.assertEqual(read_head(b""), ("", "", ""))
        self.assertEqual(len(read_head(b"X-Long: " + b"a" * 10_000).text), 8192)


class RecipientEventsSuite:
    """Storage.events for one recipient, in an account with many events of others."""

    async def test_a_recipients_events_among_many(self) -> None:
        storage = await self.open_storage()
        account = await storage.create_account("acme")
        other = await storage.create_account("other")
        wanted, neighbour = "0" * 17 + "a", "0" * 17 + "b"
        many = [NewEvent(account.id, f"{i:018d}", f"r{i}@example.net", CLICK, {"n": i}, time=1000.0 + i)
                for i in range(2000)]
        mine = [NewEvent(account.id, wanted, "a@example.net", DELIVERY, {"tags": ["t"]}, time=50.0),
                NewEvent(account.id, wanted, "a@example.net", ATTEMPT, {"tags": ["t"]}, time=10.0),
                NewEvent(account.id, wanted, "a@example.net", CLICK, {"n": -1}, time=60.0),
                NewEvent(account.id, wanted, "a@example.net", CLICK, {"n": -2}, time=60.0),
                NewEvent(other.id, wanted, "a@example.net", CLICK, {"n": -3}, time=20.0),
                NewEvent(account.id, neighbour, "b@example.net", DELIVERY, {}, time=30.0)]
        await storage.record_events(many[:1000] + mine + many[1000:])

        queries: list[str] = []
        query = storage.db.query

        async def recorded(sql: str, params: Sequence[object] = ()) -> list[tuple]:
            queries.append(sql)
            return await query(sql, params)

        self.patch(storage.db, "query", recorded)
        events = await storage.events(wanted, account_id=account.id)
        self.assertEqual([(e.type, e.time, e.data.get("n")) for e in events],
                         [(ATTEMPT, 10.0, None), (DELIVERY, 50.0, None), (CLICK, 60.0, -1),
                          (CLICK, 60.0, -2)])
        events = await storage.events(wanted, account_id=account.id, types=(ATTEMPT, DELIVERY))
        self.assertEqual([e.type for e in events], [ATTEMPT, DELIVERY])
        self.assertEqual([e.data["n"] for e in await storage.events(wanted, account_id=other.id)], [-3])
        self.assertEqual(len(await storage.events(wanted)), 5)
        self.assertEqual(await storage.events(wanted, account_id="nobody"), [])
        if storage.db.dialect == "sqlite":
            # By message id, not through the account's events in time order.
            plan = " ".join(str(row) for row in await query("EXPLAIN QUERY PLAN " + queries[0], ("x",)))
            self.assertIn("events_message", plan)
            self.assertNotIn("events_account", plan)


RecipientEventsSQLite, RecipientEventsPostgreSQL = both_backends(RecipientEventsSuite)


def _counter(metrics: Metrics, sample: str) -> float:
    families = text_string_to_metric_families(generate_latest(metrics.registry).decode())
    (value,) = [s.value for family in families for s in family.samples if s.name == sample]
    return value
