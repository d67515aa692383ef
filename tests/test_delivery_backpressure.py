"""Backpressure between the scheduler and the destination pools, in simulated time.

The scheduler, the dispatcher and the pools are the real ones, on one
task.Clock; only the two ends are stand-ins: an in-memory queue with the
storage calls the scheduler makes, and SMTP sessions that answer after a set
time. So a drain of minutes runs in well under a second, deterministically.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, task
from twisted.trial import unittest

from smtpeter.attempt import Capabilities, Peer, RecipientResult
from smtpeter.config import parse_config
from smtpeter.delivery.client_session import Transaction
from smtpeter.delivery.destination import Context, Destination, HandBack
from smtpeter.delivery.dispatcher import Dispatcher
from smtpeter.delivery.shaping import profiles, shaping_for
from smtpeter.envelope import Envelope, MessageOptions, Recipient
from smtpeter.outbound.job import StepSettings
from smtpeter.outbound.pipeline import Pipeline
from smtpeter.outbound.workers import Workers
from smtpeter.scheduler import scheduler as scheduler_module
from smtpeter.scheduler.scheduler import SHORT_CLAIM_REST, Scheduler
from smtpeter.storage.models import Lease, Outcome, StoredMessage

NODE = "node-1"
MIME = b"From: <news@example.com>\r\nTo: <someone@dest.test>\r\nSubject: hi\r\n\r\nHello.\r\n"


@dataclass
class Row:
    lease: Lease
    state: str = "queued"
    next_attempt: float = 0.0
    owner: str | None = None


class MemoryQueue:
    """The queue as the scheduler sees it (claim, messages, record, release), in memory."""

    def __init__(self, clock: task.Clock) -> None:
        self.clock = clock
        self.rows: dict[str, Row] = {}
        self.stored: dict[str, StoredMessage] = {}
        self.released: list[tuple[float, float, str]] = []  # (when, due again at, recipient id)
        self.claims: list[tuple[str, ...]] = []  # the domains each claim left out
        # Real time a claim that leaves domains out takes (reading past their rows), summed.
        self.scan_cost = 0.0
        self.spent = 0.0

    def add(self, domain: str, count: int) -> None:
        """``count`` messages of one recipient each (a newsletter), due now."""
        now = self.clock.seconds()
        for _ in range(count):
            n = len(self.rows)
            message = StoredMessage(f"m{n}", "acct", "smtp", Envelope("news@example.com"), MIME,
                                    MessageOptions(trackbounces=True), [], now, now + 86400)
            self.stored[message.id] = message
            lease = Lease(f"r{n}", message.id, "acct", Recipient(f"user{n}@{domain}"), domain, 0, False, now)
            self.rows[lease.id] = Row(lease, next_attempt=now)

    async def release_all(self, owner: str) -> None:
        pass

    async def claim(self, owner: str, limit: int, lease: float,
                    exclude_domains: list[str] = ()) -> list[Lease]:
        now = self.clock.seconds()
        self.claims.append(tuple(exclude_domains))
        self.spent += self.scan_cost if exclude_domains else 0.0
        due = sorted((r for r in self.rows.values() if r.state == "queued" and r.next_attempt <= now
                      and r.lease.domain not in exclude_domains), key=lambda r: r.next_attempt)[:limit]
        for row in due:
            row.owner, row.next_attempt = owner, now + lease
        return [row.lease for row in due]

    async def messages(self, ids: list[str]) -> dict[str, StoredMessage]:
        return {i: self.stored[i] for i in ids}

    async def record(self, owner: str, outcomes: list[Outcome], notices: list) -> None:
        for outcome in outcomes:
            row = self.rows[outcome.recipient_id]
            if row.owner == owner:
                row.state, row.next_attempt, row.owner = outcome.state, outcome.next_attempt, None

    async def release(self, owner: str, ids: list[str], next_attempt: float) -> None:
        for recipient_id in ids:
            row = self.rows[recipient_id]
            if row.owner == owner:
                row.owner, row.next_attempt = None, next_attempt
                self.released.append((self.clock.seconds(), next_attempt, recipient_id))


class Sessions:
    """SMTP sessions per destination key that accept after ``latency`` seconds (or defer, 451)."""

    def __init__(self, clock: task.Clock) -> None:
        self.clock = clock
        self.latency: dict[str, float] = {}
        self.refuse: set[str] = set()
        self.delivered: list[tuple[float, str]] = []  # (when, address)

    def open(self, destination: Destination) -> FakeSession:
        return FakeSession(self, destination.key)


class FakeSession:
    usable = True
    capabilities = Capabilities()

    def __init__(self, sessions: Sessions, key: str) -> None:
        self.sessions = sessions
        self.key = key
        self.peer = Peer("mx.dest.test", "192.0.2.1", 25)

    async def deliver(self, transaction: Transaction) -> list[RecipientResult]:
        latency = self.sessions.latency.get(self.key, 0.0)
        if latency:
            await task.deferLater(self.sessions.clock, latency, lambda: None)
        if self.key in self.sessions.refuse:
            return [RecipientResult(r.address, "data_done", 451, "4.4.2", "451 4.4.2 timed out")
                    for r in transaction.recipients]
        now = self.sessions.clock.seconds()
        self.sessions.delivered += [(now, r.address) for r in transaction.recipients]
        return [RecipientResult(r.address, "data_done", 250, "2.0.0", "250 2.0.0 Ok", delivered=True)
                for r in transaction.recipients]

    async def quit(self) -> None:
        pass

    def abort(self) -> None:
        pass


class BackpressureTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.sessions = Sessions(self.clock)

        async def fake_open(destination: Destination) -> FakeSession:
            return self.sessions.open(destination)

        self.patch(Destination, "_open", fake_open)

    def start(self, **delivery: Any) -> tuple[Scheduler, MemoryQueue]:
        """The default [delivery] config (``delivery`` overrides), routes to two fake MX hosts."""
        routes = {"slow.test": "192.0.2.2:25", "*": "192.0.2.1:25"}
        config = parse_config({"delivery": {"hold": False, "routes": routes, **delivery}}).delivery
        # No reactor: every timer must go through the clock.
        context = Context.for_config(config, None, self.clock, None, "out.test")
        self.context = context
        dispatcher = Dispatcher(config, context, "out.test")
        queue = MemoryQueue(self.clock)
        pipeline = Pipeline(Workers(self.clock, 0), StepSettings("http://t.test", (b"k",)))
        scheduler = Scheduler(queue, dispatcher, config, "out.test", self.clock, node=NODE, pipeline=pipeline)
        self.addCleanup(lambda: self.stop(scheduler, dispatcher))
        defer.ensureDeferred(scheduler.start())
        return scheduler, queue

    def stop(self, scheduler: Scheduler, dispatcher: Dispatcher) -> None:
        scheduler.stop()
        dispatcher.close()
        self.clock.advance(0)

    def run_for(self, seconds: float, step: float = 0.01, each_second: Any = None) -> None:
        for tick in range(round(seconds / step)):
            self.clock.advance(step)
            if each_second is not None and tick % round(1 / step) == 0:
                each_second()

    def per_second(self, domain: str) -> Counter[int]:
        return Counter(int(when) for when, address in self.sessions.delivered if address.endswith(domain))

    def test_a_backlog_to_one_destination_drains_at_the_profile_rate(self) -> None:
        # 3,000 queued for one destination, default config: the default profile's
        # 6,000 per minute is 100 per second, and that is what it must keep up.
        _, queue = self.start()
        queue.add("dest.test", 3000)
        self.run_for(40)
        rate = self.per_second("@dest.test")
        self.assertEqual(sum(rate.values()), 3000)
        last = max(rate)
        # The first second has the rate limiter's burst (one second's worth) on top.
        self.assertLessEqual(rate[0], 200 + 1)
        for second in range(1, last):
            self.assertGreaterEqual(rate[second], 95, f"second {second}: {dict(sorted(rate.items()))}")
            self.assertLessEqual(rate[second], 101, f"second {second}: {dict(sorted(rate.items()))}")
        self.assertLessEqual(last, 30)
        # Nothing went back to the queue on a timer.
        self.assertEqual(queue.released, [])

    def test_sessions_waiting_for_the_message_rate_share_one_timer(self) -> None:
        _, queue = self.start()
        timers = 0
        call_later = self.clock.callLater

        def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal timers
            timers += 1
            return call_later(*args, **kwargs)

        self.clock.callLater = counted
        queue.add("dest.test", 1000)
        self.run_for(12)
        self.assertEqual(len(self.sessions.delivered), 1000)
        # About one timer per message slot (plus polls and wake-ups), not one per
        # waiting session per slot: ten sessions woke ten times each before.
        self.assertLess(timers, 1.5 * 1000)

    def test_the_scheduler_claims_for_a_full_destination_only_when_it_has_room(self) -> None:
        scheduler, queue = self.start()
        queue.add("dest.test", 3000)
        seen: list[int] = []

        def look() -> None:
            for d in scheduler.dispatcher.destinations.values():
                seen.append(d.backlog)

        self.run_for(20, each_second=look)
        # Never more waiting than the cap, and never so little that the sessions ran dry.
        self.assertLessEqual(max(seen), self.context.max_backlog)
        self.assertGreater(min(seen[1:]), 0)
        # While it was full, claims left its domain out.
        self.assertIn(("dest.test",), queue.claims)

    def test_claims_that_find_only_held_work_are_paced_by_their_cost(self) -> None:
        scheduler, queue = self.start()
        queue.scan_cost = 0.1
        self.patch(scheduler_module, "perf_counter", lambda: queue.spent)
        queue.add("dest.test", 3000)
        # Mail keeps coming meanwhile: every commit wakes the scheduler, every 10 ms.
        for _ in range(1000):
            scheduler.wake()
            self.clock.advance(0.01)
        held = [claim for claim in queue.claims if claim]
        # One short claim per SHORT_CLAIM_REST times its cost, plus those after a
        # destination made room; not one per wake.
        self.assertLessEqual(len(held), 10 / (SHORT_CLAIM_REST * queue.scan_cost) + 10)
        rate = self.per_second("@dest.test")
        for second in range(1, 10):
            self.assertGreaterEqual(rate[second], 95, f"second {second}: {dict(sorted(rate.items()))}")

    def test_a_slow_destination_keeps_its_share_and_the_others_flow(self) -> None:
        # Every transaction to slow.test takes 300 s and times out (451).
        self.sessions.latency["route:192.0.2.2:25"] = 300.0
        self.sessions.refuse.add("route:192.0.2.2:25")
        scheduler, queue = self.start()
        queue.add("slow.test", 3000)
        self.run_for(5)
        queue.add("fast.test", 500)
        checked = 0

        def check() -> None:
            nonlocal checked
            now = self.clock.seconds()
            slow = scheduler.dispatcher.destinations["route:192.0.2.2:25"]
            # Memory stays bounded: the slow one holds its cap and its sessions' work, no more.
            self.assertLessEqual(slow.backlog, self.context.max_backlog)
            self.assertLessEqual(scheduler.in_flight, self.context.max_backlog + slow.shaping.max_connections
                                 + 2 * self.context.max_backlog)
            # No lease runs out while its work waits in a pool.
            for job in slow.queue:
                for recipient in job.transaction.recipients:
                    row = next(r for r in queue.rows.values() if r.lease.address == recipient.address)
                    self.assertEqual(row.owner, NODE)
                    self.assertGreater(row.next_attempt, now)
            checked += 1

        self.run_for(10, each_second=check)
        fast = self.per_second("@fast.test")
        self.assertEqual(sum(fast.values()), 500)
        self.assertLessEqual(max(fast), 5 + 5)  # 500 at 100/s (plus the burst) from second 5 on
        # Long enough for work to wait past max_wait (lease / 2) and be handed back.
        self.run_for(2000, step=0.5, each_second=check)
        self.assertGreater(checked, 2000)
        waited = [until - when for when, until, _ in queue.released]
        self.assertTrue(waited, "work that waited too long was handed back")
        self.assertEqual(set(waited), {0.0})  # due again at once, never on a timer

    def test_a_full_destination_hands_back_beyond_its_cap_due_now_and_says_when_it_has_room(self) -> None:
        config = parse_config({"delivery": {"hold": False}}).delivery
        context = Context(None, self.clock, None, config.timeouts, "out.test", max_backlog=10)
        shaping = shaping_for(["mx.dest.test"], config, profiles(config))
        rooms: list[int] = []
        destination = Destination("key", [("192.0.2.1", 25)], shaping, context,
                                  on_room=lambda: rooms.append(destination.backlog))
        self.sessions.latency["key"] = 1.0
        results = [destination.submit(Transaction(Envelope("a@d.test", (Recipient(f"r{n}@d.test"),)), MIME))
                   for n in range(12)]
        # One went to the first session at once, ten wait, the twelfth is beyond the cap.
        self.assertEqual((destination.sessions, destination.backlog), (1, 10))
        self.assertTrue(destination.busy)
        handed_back: list[HandBack] = []
        results[-1].addErrback(lambda f: handed_back.append(f.value))
        self.assertEqual([h.until for h in handed_back], [self.clock.seconds()])
        self.run_for(10)
        self.assertEqual(destination.backlog, 0)
        # Room for a whole claim (half the cap) again: said once, at that moment.
        self.assertEqual(rooms, [context.max_backlog - context.claim_limit])
        destination.close()
        self.clock.advance(0)
