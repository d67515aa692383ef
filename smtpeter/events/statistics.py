"""Statistics: a consumer of the event feed that counts events per account, minute and series.

The dashboard's charts read these counts (``Storage.event_counts``), never the
events themselves. Counts are written in the transaction that saves the
consumer's feed position, so each event is counted exactly once, also across
restarts; a new install counts the events already recorded on its first run.
Clicks and opens by machines (``data["bot"]``, events/bots.py) are counted
apart, so a chart can leave them out.

Bounces are counted by reason and receiving domain (``bounce_counts``) for the
dashboard's bounces page, by a second consumer (``BOUNCE_CONSUMER``): the events
themselves are no place to count from (a bounce event carries the whole
returned message), and a consumer of its own counts the events recorded before
it existed on its first run, as a new install's statistics do.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from twisted.internet.interfaces import IReactorTime

from smtpeter.events.feed import SERVICE_PACE, Feed
from smtpeter.events.model import (
    ABUSE,
    ATTEMPT,
    BOUNCE,
    CLICK,
    DEFERRED,
    DELIVERY,
    FAILURE,
    OPEN,
    RESPONSE,
    UNSUBSCRIBE,
)
from smtpeter.storage import Storage
from smtpeter.storage.dashboard import BOUNCE_SPANS, MINUTE
from smtpeter.storage.db import Statement
from smtpeter.storage.models import Event

# Each event type and the chart series it counts in, in the order charts show them.
SERIES = {ATTEMPT: "accepted", DELIVERY: "delivered", DEFERRED: "deferred", FAILURE: "failed",
          BOUNCE: "bounced", OPEN: "opened", CLICK: "clicked", RESPONSE: "replied", ABUSE: "complained",
          UNSUBSCRIBE: "unsubscribed"}
MACHINE_SCORED = (CLICK, OPEN)
CONSUMER = "statistics"
BOUNCE_CONSUMER = "statistics-bounces"


def counts(events: Sequence[Event]) -> list[tuple[str, int, str, bool, int]]:
    """(account, minute, series, bot, count) for ``events``, each key once."""
    found: Counter[tuple[str, int, str, bool]] = Counter()
    for event in events:
        series = SERIES.get(event.type)
        if series is not None:
            # Only clicks and opens are scored (and their data read): machines make no other kind.
            bot = event.type in MACHINE_SCORED and event.data.get("bot") is True
            found[(event.account_id, int(event.time // MINUTE), series, bot)] += 1
    return [(*key, count) for key, count in found.items()]


def bounce_counts(events: Sequence[Event]) -> list[tuple[str, int, int, str, str, str, bool, int]]:
    """(account, span, start, kind, reason, domain, hard, count) for ``events``, each key once.

    Counted: every bounce (a report that came back), and every failure with a reason but those a
    bounce reported (state ``bounce``: that bounce is counted) and suppressed recipients (never
    sent to)."""
    found: Counter[tuple[str, int, int, str, str, str, bool]] = Counter()
    for event in events:
        if event.type not in (BOUNCE, FAILURE):
            continue
        data = event.data
        if event.type == FAILURE and (data.get("state") == "bounce" or data.get("type") == "suppressed"):
            continue
        if not data.get("reason"):
            continue
        domain = event.recipient.rpartition("@")[2]
        for span in BOUNCE_SPANS:
            start = int(event.time // span) * span
            found[(event.account_id, span, start, event.type, str(data["reason"]), domain,
                   data.get("hardbounce") is True)] += 1
    return [(*key, count) for key, count in found.items()]


class Statistics:
    def __init__(self, storage: Storage, clock: IReactorTime) -> None:
        self.storage = storage
        self.feed = Feed(storage, CONSUMER, clock, pace=SERVICE_PACE)
        self.bounce_feed = Feed(storage, BOUNCE_CONSUMER, clock, pace=SERVICE_PACE)

    def start(self) -> None:
        self.feed.start(self._handle)
        self.bounce_feed.start(self._handle_bounces)

    async def stop(self) -> None:
        await self.feed.stop()
        await self.bounce_feed.stop()

    async def _handle(self, events: list[Event]) -> list[Statement]:
        rows = counts(events)
        return [self.storage.add_event_counts(rows)] if rows else []

    async def _handle_bounces(self, events: list[Event]) -> list[Statement]:
        rows = bounce_counts(events)
        return [self.storage.add_bounce_counts(rows)] if rows else []
